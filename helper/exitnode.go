package main

import (
	"context"
	"net/netip"

	"tailscale.com/ipn"
	"tailscale.com/net/tsaddr"

	"github.com/tsproc/tsproc/helper/internal/wire"
)

// set_exit_node (docs/protocol.md §4): the exit node this node sends traffic for addresses
// outside the tailnet through (tsnet users do this with LocalClient().EditPrefs(ExitNodeID)).
// Once one is set, the node's routing table sends every address through it, so dial and
// dial_udp — which reach only what that table routes over WireGuard (resolve.go) — reach the
// internet through the exit node, and still never through the host's network. Offering to be
// an exit node is start's advertise_exit_node (the exit routes, approved like other routes).

func (n *node) setExitNode(ctx context.Context, p *wire.ParamReader) (*wire.Reply, error) {
	timeoutMS := readTimeout(p)
	peer := p.String("exit_node") // "" clears it
	if p.Err != nil {
		return nil, p.Err
	}
	srv, lc, err := n.requireRunning()
	if err != nil {
		return nil, err
	}
	callCtx, cancel := callContext(ctx, timeoutMS)
	defer cancel()
	what := "setting the exit node"
	var ip netip.Addr
	if peer != "" {
		if ip, err = n.resolver.resolve(callCtx, srv, lc, peer); err != nil {
			return nil, n.callError(ctx, callCtx, what, timeoutMS,
				wire.NewError(wire.CodeDialFailed, "exit node %q: %v", peer, err))
		}
		ip4, ip6 := srv.TailscaleIPs()
		if !tsaddr.IsTailscaleIP(ip) || ip == ip4 || ip == ip6 {
			return nil, wire.NewError(wire.CodeBadRequest,
				`"exit_node": %q (%s) is not another node of the tailnet`, peer, ip)
		}
	}
	// By IP: the backend turns it into the node's ID once its netmap has that node, and
	// follows the node if it comes back after a restart.
	_, err = lc.EditPrefs(callCtx, &ipn.MaskedPrefs{
		Prefs:         ipn.Prefs{ExitNodeIP: ip},
		ExitNodeIPSet: true,
		ExitNodeIDSet: true,
	})
	if err != nil {
		return nil, n.callError(ctx, callCtx, what, timeoutMS,
			wire.NewError(wire.CodeInternal, "%s: %v", what, err))
	}
	return wire.OKReply(map[string]any{"exit_node": ipString(ip)}), nil
}

func ipString(ip netip.Addr) string {
	if !ip.IsValid() {
		return ""
	}
	return ip.String()
}
