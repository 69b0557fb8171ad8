package main

import (
	"context"

	"tailscale.com/tailcfg"

	"github.com/tsproc/tsproc/helper/internal/wire"
)

// pingPeer sends a TSMP ping (through WireGuard, so it proves the whole data path) and reports
// the latency, and the path from the peer's status: a direct endpoint, or the DERP relay.
func (n *node) pingPeer(ctx context.Context, p *wire.ParamReader) (*wire.Reply, error) {
	timeoutMS := readTimeout(p)
	host := p.String("host")
	if p.Err != nil {
		return nil, p.Err
	}
	srv, lc, err := n.requireRunning()
	if err != nil {
		return nil, err
	}
	pingCtx, cancel := callContext(ctx, timeoutMS)
	defer cancel()
	ip, err := n.resolver.resolve(pingCtx, srv, lc, host)
	if err != nil {
		// Like dial: an unknown name or an address no node holds fails at once.
		return nil, wire.NewError(wire.CodeDialFailed, "ping %s: %v", host, err)
	}
	res, err := lc.Ping(pingCtx, ip, tailcfg.PingTSMP)
	switch {
	case pingCtx.Err() != nil:
		return nil, wire.NewError(wire.CodeTimeout, "ping %s: no answer within %d ms%s", host, timeoutMS, n.health())
	case err != nil:
		return nil, wire.NewError(wire.CodeDialFailed, "ping %s: %v", host, err)
	case res.Err != "":
		return nil, wire.NewError(wire.CodeDialFailed, "ping %s: %s", host, res.Err)
	}
	result := map[string]any{
		"ip":        ip.String(),
		"node_name": res.NodeName,
		"hostname":  "",
		"dns_name":  "",
		"latency_s": res.LatencySeconds,
		"endpoint":  res.Endpoint,
		"relay":     res.DERPRegionCode,
	}
	// A TSMP result may not name the path, and names the peer by its short MagicDNS name only;
	// the peer's status has the rest.
	if st, err := lc.Status(pingCtx); err == nil {
		for _, ps := range st.Peer {
			for _, a := range ps.TailscaleIPs {
				if a == ip {
					result["hostname"], result["dns_name"] = ps.HostName, ps.DNSName
					if res.Endpoint == "" {
						result["endpoint"] = ps.CurAddr
					}
					if res.DERPRegionCode == "" {
						result["relay"] = ps.Relay
					}
				}
			}
		}
	}
	return wire.OKReply(result), nil
}
