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
)

// Connections: listen with its accept hand-over, close_listener, and dial.

func (n *node) listen(p *paramReader) (*reply, error) {
	network := p.string("network")
	port := p.uint("port", 1, 65535)
	backlog := p.optUint("backlog", 1, maxBacklog, defaultBacklog)
	if p.err != nil {
		return nil, p.err
	}
	if network != "tcp" {
		return nil, newError(codeBadRequest, `"network" must be "tcp"`)
	}
	srv, _ := n.server()
	if srv == nil {
		return nil, newError(codeNotRunning, "call start first")
	}
	if err := n.checkListenerRoom(); err != nil {
		return nil, err
	}
	ln, err := srv.Listen("tcp", ":"+strconv.FormatUint(port, 10))
	if err != nil {
		if strings.Contains(err.Error(), "already open") {
			return nil, newError(codeAddressInUse, "port %d: %v", port, err)
		}
		return nil, newError(codeInternal, "listen: %v", err)
	}
	return n.openListener(ln, int(backlog))
}

// openListener registers ln and, once the host has the listener id, runs its grant-based
// accept pump. Every kind of listener (plain, TLS, Funnel, any-port) goes through here. It
// owns ln: on error ln is closed.
func (n *node) openListener(ln net.Listener, backlog int) (*reply, error) {
	n.mu.Lock()
	switch {
	case n.closed:
		n.mu.Unlock()
		ln.Close()
		return nil, newError(codeInternal, "helper is shutting down")
	case len(n.listeners) >= maxListeners: // lost a race with another listen
		n.mu.Unlock()
		ln.Close()
		return nil, newError(codeLimit, "a node has at most %d listeners", maxListeners)
	}
	n.nextListener++
	l := newTSListener(n.nextListener, ln, backlog)
	n.listeners[l.id] = l
	n.mu.Unlock()

	hooks := listenerHooks{handOver: n.handOver, ended: n.listenerEnded}
	return &reply{
		result: map[string]any{"listener": l.id, "addr": ln.Addr().String()},
		fd:     -1,
		after: func(bool) {
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
		return nil, nil, nil, newError(codeNotRunning, "call start and up first")
	}
	st, err := lc.StatusWithoutPeers(ctx)
	if err != nil {
		return nil, nil, nil, newError(codeInternal, "status: %v", err)
	}
	return srv, lc, st, nil
}

// checkListenerRoom reports a limit error when the node has all the listeners it may have.
func (n *node) checkListenerRoom() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.listeners) >= maxListeners {
		return newError(codeLimit, "a node has at most %d listeners", maxListeners)
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
	err = n.out.notify("accepted", map[string]any{
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
	err := n.out.notify("listener_closed", map[string]any{"listener": l.id, "reason": reason}, -1)
	if err != nil {
		helperLogf("listener %d: sending listener_closed: %v", l.id, err)
	}
}

func (n *node) closeListener(p *paramReader) (*reply, error) {
	id := p.uint("listener", 0, math.MaxUint64)
	if p.err != nil {
		return nil, p.err
	}
	n.mu.Lock()
	l := n.listeners[id]
	delete(n.listeners, id)
	n.mu.Unlock()
	if l == nil {
		return nil, newError(codeNotFound, "no listener %d", id)
	}
	l.close()
	return okReply(map[string]any{}), nil
}

func (n *node) dial(ctx context.Context, p *paramReader) (*reply, error) {
	network := p.string("network")
	host := p.string("host")
	port := p.uint("port", 1, 65535)
	timeoutMS := p.uint("timeout_ms", 0, maxTimeoutMS)
	if p.err != nil {
		return nil, p.err
	}
	switch {
	case network != "tcp":
		return nil, newError(codeBadRequest, `"network" must be "tcp"`)
	case host == "" || len(host) > 253:
		return nil, newError(codeBadRequest, `"host" must be 1 to 253 characters`)
	}
	srv, lc, st, err := n.startedStatus(ctx)
	if err != nil {
		return nil, err
	}
	// Starting is let through: tsnet's Dial waits for Running within the timeout.
	if st.BackendState != ipn.Running.String() && st.BackendState != ipn.Starting.String() {
		return nil, newError(codeNotRunning, "node is in state %s", st.BackendState)
	}

	dialCtx, cancel := context.WithTimeout(ctx, time.Duration(timeoutMS)*time.Millisecond)
	defer cancel()
	ip, err := n.resolver.resolve(dialCtx, lc, host)
	if err != nil {
		return nil, newError(codeDialFailed, "dial %s: %v", host, err)
	}
	// Dial the resolved IP, never the name: tsnet would resolve an unknown name with the
	// system's DNS (see resolve.go).
	addr := netip.AddrPortFrom(ip, uint16(port)).String()
	c, err := srv.Dial(dialCtx, "tcp", addr)
	if err != nil {
		switch {
		case ctx.Err() != nil:
			return nil, newError(codeInternal, "dial cancelled: the helper is shutting down")
		case dialCtx.Err() != nil:
			return nil, newError(codeTimeout, "dial %s: no connection after %d ms%s", addr, timeoutMS, n.health())
		}
		return nil, newError(codeDialFailed, "dial %s: %v", addr, err)
	}
	b, err := n.newConn(c)
	if err != nil {
		return nil, err
	}
	return &reply{
		result: map[string]any{
			"conn":   b.id,
			"local":  c.LocalAddr().String(),
			"remote": c.RemoteAddr().String(),
			"fd":     true,
		},
		fd:    b.takePassFD(),
		after: func(sent bool) { n.startConn(b, sent) },
	}, nil
}
