package main

import (
	"context"
	"net"
	"net/netip"

	"tailscale.com/client/local"
	"tailscale.com/ipn"
	"tailscale.com/tsnet"

	"github.com/tsproc/tsproc/helper/internal/timewait"
	"github.com/tsproc/tsproc/helper/internal/wire"
)

// dial: a TCP connection to a tailnet address, handed to the host with the response.

func (n *node) dial(ctx context.Context, p *wire.ParamReader) (*wire.Reply, error) {
	timeoutMS := readTimeout(p)
	network := p.String("network")
	host := p.String("host")
	port := p.Uint("port", 1, 65535)
	if p.Err != nil {
		return nil, p.Err
	}
	switch {
	case network != "tcp":
		return nil, wire.NewError(wire.CodeBadRequest, `"network" must be "tcp"`)
	case host == "" || len(host) > 253:
		return nil, wire.NewError(wire.CodeBadRequest, `"host" must be 1 to 253 characters`)
	}
	srv, lc, err := n.dialableServer(ctx)
	if err != nil {
		return nil, err
	}

	dialCtx, cancel := callContext(ctx, timeoutMS)
	defer cancel()
	ip, err := n.resolver.resolve(dialCtx, srv, lc, host)
	if err != nil {
		return nil, wire.NewError(wire.CodeDialFailed, "dial %s: %v", host, err)
	}
	// Dial the resolved IP, never the name, and through netstack only: tsnet's Dial would
	// resolve an unknown name with the system's DNS and send an address its netmap does not
	// route through the host network (see resolve.go).
	dst := netip.AddrPortFrom(ip, uint16(port))
	addr := dst.String()
	n.paths.await(dialCtx, srv, lc, ip)
	// A handshake without an answer is tried again from a new port (see package timewait).
	c, err := timewait.Dial(dialCtx, func(ctx context.Context) (net.Conn, error) {
		return dialTailnet(ctx, srv, "tcp", dst)
	})
	if err != nil {
		switch {
		case ctx.Err() != nil:
			return nil, wire.NewError(wire.CodeInternal, "dial cancelled: the helper is shutting down")
		case dialCtx.Err() != nil:
			return nil, wire.NewError(wire.CodeTimeout, "dial %s: no connection after %d ms%s", addr, timeoutMS, n.health())
		}
		return nil, wire.NewError(wire.CodeDialFailed, "dial %s: %v", addr, err)
	}
	b, err := n.newConn(c)
	if err != nil {
		return nil, err
	}
	return &wire.Reply{
		Result: map[string]any{
			"conn":   b.ID(),
			"local":  c.LocalAddr().String(),
			"remote": c.RemoteAddr().String(),
			"fd":     true,
		},
		FD:    b.TakePassFD(),
		After: func(sent bool) { n.startConn(b, sent) },
	}, nil
}

// dialableServer returns the started server and its local client when the node may dial:
// Running, or Starting (tsnet's Dial waits for Running within the dial's timeout).
//
// It reads the state the IPN-bus watcher keeps (start.go), which costs nothing, but trusts
// only a yes from it. The watcher is one subscriber of the bus among others (tsnet's Up is
// another) and lags behind the backend by as long as its goroutines wait to run: on two busy
// cores it was seen still at NeedsLogin 100-400 ms after up had returned Running. So a state
// that would refuse the dial, or none yet, is checked with the LocalAPI, which reads the
// backend's own state; its StatusWithoutPeers costs ~0.4 ms of helper CPU
// (benchmarks/README.md), paid only when the watcher says no.
func (n *node) dialableServer(ctx context.Context) (*tsnet.Server, *local.Client, error) {
	srv, lc, err := n.requireRunning()
	if err != nil {
		return nil, nil, err
	}
	n.mu.Lock()
	state := n.state
	n.mu.Unlock()
	if !dialableState(state) {
		_, _, st, err := n.startedStatus(ctx)
		if err != nil {
			return nil, nil, err
		}
		if !dialableState(st.BackendState) {
			return nil, nil, wire.NewError(wire.CodeNotRunning, "node is in state %s", st.BackendState)
		}
	}
	return srv, lc, nil
}

func dialableState(state string) bool {
	return state == ipn.Running.String() || state == ipn.Starting.String()
}
