package main

import (
	"context"
	"net"
	"strconv"

	"github.com/tsproc/tsproc/helper/internal/bridge"
	"github.com/tsproc/tsproc/helper/internal/wire"
)

// TCP listeners: listen, the registration every kind of listener goes through, the
// hand-over of accepted connections (the accept pump itself is in accept.go), and
// close_listener.

func (n *node) listen(_ context.Context, p *wire.ParamReader) (*wire.Reply, error) {
	network := p.String("network")
	port := p.Uint("port", 1, 65535)
	backlog := p.OptUint("backlog", 1, maxBacklog, defaultBacklog)
	if p.Err != nil {
		return nil, p.Err
	}
	if network != "tcp" {
		return nil, wire.NewError(wire.CodeBadRequest, `"network" must be "tcp"`)
	}
	srv, _, err := n.requireRunning()
	if err != nil {
		return nil, err
	}
	if err := n.checkListenerRoom(); err != nil {
		return nil, err
	}
	ln, err := srv.Listen("tcp", ":"+strconv.FormatUint(port, 10))
	if err != nil {
		if isPortInUse(err) {
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
	params := map[string]any{
		"listener": l.id,
		"conn":     b.ID(),
		"local":    c.LocalAddr().String(),
		"remote":   c.RemoteAddr().String(),
		"fd":       true,
	}
	if src, ok := bridge.FunnelSource(c); ok {
		// The peer is the ingress node; the connection's real origin is the public client.
		params["remote"], params["funnel"] = src.String(), true
	}
	err = wire.Notify(n.out, "accepted", params, b.TakePassFD())
	// The host has it now, or it is reset below: either way its peer needs no reset later.
	n.record.Done(c.LocalAddr(), c.RemoteAddr())
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

func (n *node) closeListener(_ context.Context, p *wire.ParamReader) (*wire.Reply, error) {
	return closeByID(p, "listener", &n.mu, &n.listeners)
}
