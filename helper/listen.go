package main

import (
	"context"
	"math"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/ipn"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tsnet"

	"github.com/tsproc/tsproc/helper/internal/wire"
)

// Connections: listen with its accept hand-over, close_listener, and dial.

func (n *node) listen(p *wire.ParamReader) (*wire.Reply, error) {
	network := p.String("network")
	port := p.Uint("port", 1, 65535)
	backlog := p.OptUint("backlog", 1, maxBacklog, defaultBacklog)
	if p.Err != nil {
		return nil, p.Err
	}
	if network != "tcp" {
		return nil, wire.NewError(wire.CodeBadRequest, `"network" must be "tcp"`)
	}
	srv, _ := n.server()
	if srv == nil {
		return nil, wire.NewError(wire.CodeNotRunning, "call start first")
	}
	if err := n.checkListenerRoom(); err != nil {
		return nil, err
	}
	ln, err := srv.Listen("tcp", ":"+strconv.FormatUint(port, 10))
	if err != nil {
		if strings.Contains(err.Error(), "already open") {
			return nil, wire.NewError(wire.CodeAddressInUse, "port %d: %v", port, err)
		}
		return nil, wire.NewError(wire.CodeInternal, "listen: %v", err)
	}
	return n.openListener(ln, int(backlog))
}

// openListener registers ln and, once the host has the listener id, runs its grant-based
// accept pump. Every kind of listener (plain, TLS, Funnel, any-port) goes through here. It
// owns ln: on error ln is closed.
func (n *node) openListener(ln net.Listener, backlog int) (*wire.Reply, error) {
	n.mu.Lock()
	switch {
	case n.closed:
		n.mu.Unlock()
		ln.Close()
		return nil, wire.NewError(wire.CodeInternal, "helper is shutting down")
	case len(n.listeners) >= maxListeners: // lost a race with another listen
		n.mu.Unlock()
		ln.Close()
		return nil, wire.NewError(wire.CodeLimit, "a node has at most %d listeners", maxListeners)
	}
	n.nextListener++
	l := newTSListener(n.nextListener, ln, backlog)
	n.listeners[l.id] = l
	n.mu.Unlock()

	hooks := listenerHooks{handOver: n.handOver, ended: n.listenerEnded}
	return &wire.Reply{
		Result: map[string]any{"listener": l.id, "addr": ln.Addr().String()},
		FD:     -1,
		After: func(bool) {
			// Accept only once the host knows the listener id the accepted notifications
			// will name.
			if !n.goOwned(func() { l.run(hooks) }) {
				ln.Close()
				close(l.done)
			}
		},
	}, nil
}

// startedStatus returns the started server, its local client and its status without peers,
// or not_running before start.
func (n *node) startedStatus(ctx context.Context) (*tsnet.Server, *local.Client, *ipnstate.Status, error) {
	srv, lc := n.server()
	if srv == nil {
		return nil, nil, nil, wire.NewError(wire.CodeNotRunning, "call start and up first")
	}
	st, err := lc.StatusWithoutPeers(ctx)
	if err != nil {
		return nil, nil, nil, wire.NewError(wire.CodeInternal, "status: %v", err)
	}
	return srv, lc, st, nil
}

// checkListenerRoom reports a limit error when the node has all the listeners it may have.
func (n *node) checkListenerRoom() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.listeners) >= maxListeners {
		return wire.NewError(wire.CodeLimit, "a node has at most %d listeners", maxListeners)
	}
	return nil
}

// handOver passes an accepted connection to the host (the accepted notification).
func (n *node) handOver(l *tsListener, c net.Conn) bool {
	b, err := n.newConn(c)
	if err != nil {
		helperLogf("listener %d: dropping a connection: %v", l.id, err)
		return false
	}
	err = wire.Notify(n.out, "accepted", map[string]any{
		"listener": l.id,
		"conn":     b.id,
		"local":    c.LocalAddr().String(),
		"remote":   c.RemoteAddr().String(),
		"fd":       true,
	}, b.takePassFD())
	n.startConn(b, err == nil)
	return err == nil
}

// listenerEnded sends listener_closed for a listener that ended without close_listener.
func (n *node) listenerEnded(l *tsListener, reason string) {
	n.mu.Lock()
	delete(n.listeners, l.id)
	n.mu.Unlock()
	err := wire.Notify(n.out, "listener_closed", map[string]any{"listener": l.id, "reason": reason}, -1)
	if err != nil {
		helperLogf("listener %d: sending listener_closed: %v", l.id, err)
	}
}

func (n *node) closeListener(p *wire.ParamReader) (*wire.Reply, error) {
	id := p.Uint("listener", 0, math.MaxUint64)
	if p.Err != nil {
		return nil, p.Err
	}
	n.mu.Lock()
	l := n.listeners[id]
	delete(n.listeners, id)
	n.mu.Unlock()
	if l == nil {
		return nil, wire.NewError(wire.CodeNotFound, "no listener %d", id)
	}
	l.close()
	return wire.OKReply(map[string]any{}), nil
}

func (n *node) dial(ctx context.Context, p *wire.ParamReader) (*wire.Reply, error) {
	network := p.String("network")
	host := p.String("host")
	port := p.Uint("port", 1, 65535)
	timeoutMS := p.Uint("timeout_ms", 0, maxTimeoutMS)
	if p.Err != nil {
		return nil, p.Err
	}
	switch {
	case network != "tcp":
		return nil, wire.NewError(wire.CodeBadRequest, `"network" must be "tcp"`)
	case host == "" || len(host) > 253:
		return nil, wire.NewError(wire.CodeBadRequest, `"host" must be 1 to 253 characters`)
	}
	srv, lc, st, err := n.startedStatus(ctx)
	if err != nil {
		return nil, err
	}
	// Starting is let through: tsnet's Dial waits for Running within the timeout.
	if st.BackendState != ipn.Running.String() && st.BackendState != ipn.Starting.String() {
		return nil, wire.NewError(wire.CodeNotRunning, "node is in state %s", st.BackendState)
	}

	dialCtx, cancel := context.WithTimeout(ctx, time.Duration(timeoutMS)*time.Millisecond)
	defer cancel()
	ip, err := n.resolver.resolve(dialCtx, lc, host)
	if err != nil {
		return nil, wire.NewError(wire.CodeDialFailed, "dial %s: %v", host, err)
	}
	// Dial the resolved IP, never the name: tsnet would resolve an unknown name with the
	// system's DNS (see resolve.go).
	addr := netip.AddrPortFrom(ip, uint16(port)).String()
	c, err := srv.Dial(dialCtx, "tcp", addr)
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
			"conn":   b.id,
			"local":  c.LocalAddr().String(),
			"remote": c.RemoteAddr().String(),
			"fd":     true,
		},
		FD:    b.takePassFD(),
		After: func(sent bool) { n.startConn(b, sent) },
	}, nil
}
