package main

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/tsproc/tsproc/helper/internal/peerreset"
	"github.com/tsproc/tsproc/helper/internal/wire"
)

// reset_peers: the host names the TCP connections a previous helper of this node bridged when
// it died; each peer is made to reset its end now (internal/peerreset), so that a peer that
// only reads learns at once, not after its keepalive (about two hours on netstack).

// resetPeersRounds are when the probes are sent, after the call: at once, and again in case
// a probe or the peer's answer was lost, or met the peer's rate limit on such answers
// (netstack's: one per connection per 500 ms).
var resetPeersRounds = []time.Duration{0, 600 * time.Millisecond, 1500 * time.Millisecond, 3 * time.Second}

// maxResetPeers bounds one call: the host sends at most the connections one helper had.
const maxResetPeers = 1 << 16

func (n *node) resetPeers(ctx context.Context, p *wire.ParamReader) (*wire.Reply, error) {
	conns := p.Strings("conns")
	if p.Err != nil {
		return nil, p.Err
	}
	if len(conns) > maxResetPeers {
		return nil, wire.NewError(wire.CodeBadRequest, `"conns": more than %d`, maxResetPeers)
	}
	srv, _, err := n.requireRunning()
	if err != nil {
		return nil, err
	}
	tun, ok := srv.Sys().Tun.GetOK()
	if !ok {
		return nil, wire.NewError(wire.CodeNotRunning, "the node has no tunnel yet")
	}
	ip4, ip6 := srv.TailscaleIPs()
	var segments [][]byte
	for _, c := range conns {
		local, remote, err := parseTuple(c)
		if err != nil {
			return nil, wire.NewError(wire.CodeBadRequest, `"conns": %q: %v`, c, err)
		}
		// Only this node's own addresses: a probe from any other would be dropped by the
		// peer anyway (it is not what the netmap says this node holds).
		if !slices.Contains([]netip.Addr{ip4, ip6}, local.Addr()) {
			continue
		}
		seg, err := peerreset.Segment(local, remote)
		if err != nil {
			return nil, wire.NewError(wire.CodeBadRequest, `"conns": %q: %v`, c, err)
		}
		segments = append(segments, seg)
	}
	helperLogf("reset_peers: %d of %d connections are this node's: probing their peers", len(segments), len(conns))
	debugLogf("reset_peers: %s", strings.Join(conns, ", "))
	if len(segments) > 0 {
		n.goOwned(func() {
			start := time.Now()
			for _, at := range resetPeersRounds {
				select {
				case <-ctx.Done(): // the helper is shutting down
					return
				case <-time.After(time.Until(start.Add(at))):
				}
				for _, seg := range segments {
					// InjectOutbound keeps no reference: the same bytes go again next round.
					if err := tun.InjectOutbound(slices.Clone(seg)); err != nil {
						helperLogf("reset_peers: %v", err)
						return
					}
				}
			}
		})
	}
	return wire.OKReply(map[string]any{"probed": len(segments)}), nil
}

// parseTuple reads "LOCAL REMOTE", two "ip:port" (a dial's or an accepted's local and remote).
func parseTuple(s string) (local, remote netip.AddrPort, err error) {
	l, r, ok := strings.Cut(s, " ")
	if !ok {
		return local, remote, fmt.Errorf(`want "local remote"`)
	}
	if local, err = netip.ParseAddrPort(l); err != nil {
		return local, remote, err
	}
	if remote, err = netip.ParseAddrPort(r); err != nil {
		return local, remote, err
	}
	return netip.AddrPortFrom(local.Addr().Unmap(), local.Port()), netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port()), nil
}
