package main

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/tsnet"
)

// peerPathWait bounds how long a dial waits for its peer's path: wireguard-go sends its next
// handshake initiation this long after one that went nowhere, so waiting longer gains nothing.
const peerPathWait = 5 * time.Second

// peerPathPoll is how often the netmap is read again while a peer has no path.
const peerPathPoll = 20 * time.Millisecond

// peerPaths holds back the first dial to a peer until this node's netmap names the peer's home
// DERP region.
//
// A node that has just come up reaches the others' netmaps before its home DERP region does.
// Until a direct path is confirmed, magicsock sends a peer's WireGuard packets through its
// DERP region only, so a dial in that window sends the handshake initiation nowhere (known
// endpoints do not help: they get disco pings, not the handshake), and wireguard-go tries
// again only 5 s later (REKEY_TIMEOUT), however soon the region arrives: the dial takes 5 s
// instead of milliseconds (1 in 5 of "start a node, dial it at once" on the local tailnet).
// Waiting for the region — usually some tens of milliseconds — makes the first handshake
// count. An address is looked up only until its node has been seen with a region, or once it
// has been waited for in vain (a tailnet without DERP: then the old 5 s is all there is), so
// later dials cost nothing.
type peerPaths struct {
	mu   sync.Mutex
	seen map[netip.Addr]struct{}
}

// await returns once the node holding ip has a home DERP region in the netmap,
// after peerPathWait, or when ctx ends, whichever comes first; the dial then goes ahead and
// meets its own deadline. An address no node holds (inside a subnet route) or this node's
// own is not waited for.
func (p *peerPaths) await(ctx context.Context, srv *tsnet.Server, lc *local.Client, ip netip.Addr) {
	p.mu.Lock()
	_, ok := p.seen[ip]
	p.mu.Unlock()
	if ok {
		return // the common case, and all it costs
	}
	if ip4, ip6 := srv.TailscaleIPs(); ip == ip4 || ip == ip6 {
		return
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, peerPathWait)
	defer cancel()
	for {
		who, err := lc.WhoIs(ctx, ip.String())
		if err != nil || who.Node == nil {
			return // not a node's address, or the node is shutting down: nothing to wait for
		}
		if who.Node.HomeDERP != 0 {
			p.remember(ip)
			return
		}
		select {
		case <-ctx.Done():
			if ctx.Err() == context.DeadlineExceeded && parent.Err() == nil {
				p.remember(ip) // waited in vain for peerPathWait: do not wait again
			}
			return
		case <-time.After(peerPathPoll):
		}
	}
}

func (p *peerPaths) remember(ip netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.seen == nil {
		p.seen = make(map[netip.Addr]struct{})
	}
	p.seen[ip] = struct{}{}
}
