package main

import (
	"context"
	"math"

	"github.com/tsproc/tsproc/helper/internal/wire"
)

// The method table of docs/protocol.md §4 and the host's notifications. The handlers are in
// files named for what they do: start.go (start, up), listen.go, listen_kinds.go, dial.go,
// packet.go, ping.go, forward.go and info.go (status, whois, logout; cert_domains is with the
// TLS listeners).
// The bounds they check are in limits.go, the deadline of those that wait in deadline.go.

// handler answers one method. ctx is the request's: cancelled when the helper shuts down.
type handler func(n *node, ctx context.Context, p *wire.ParamReader) (*wire.Reply, error)

// methods is the method table of docs/protocol.md §4 (TestProtocolDocMatchesMethods keeps the
// two in step). hello is the dispatcher's own; bench_echo exists for the benchmarks only.
var methods = map[string]handler{
	"start":           (*node).start,
	"up":              (*node).up,
	"listen":          (*node).listen,
	"close_listener":  (*node).closeListener,
	"dial":            (*node).dial,
	"forward":         (*node).forward,
	"close_forward":   (*node).closeForward,
	"status":          (*node).status,
	"whois":           (*node).whois,
	"logout":          (*node).logout,
	"ping":            (*node).ping,
	"listen_tls":      (*node).listenTLS,
	"listen_funnel":   (*node).listenFunnel,
	"listen_any_port": (*node).listenAnyPort,
	"listen_packet":   (*node).listenPacket,
	"dial_udp":        (*node).dialUDP,
	"ping_peer":       (*node).pingPeer,
	"cert_domains":    (*node).certDomains,
	"cert_pair":       (*node).certPair,
	"listen_service":  (*node).listenService,
	"capture_pcap":    (*node).capturePcap,
	"stop_capture":    (*node).stopCapture,
	"set_exit_node":   (*node).setExitNode,
	"bench_echo":      (*node).benchEcho,
	"reset_peers":     (*node).resetPeers,
	"shutdown":        (*node).shutdown,
}

// ping is the heartbeat: answered like any method, by the dispatcher's pool.
func (n *node) ping(context.Context, *wire.ParamReader) (*wire.Reply, error) {
	return wire.OKReply(map[string]any{}), nil
}

// shutdown is answered first; the process then closes everything and exits (runNode).
func (n *node) shutdown(context.Context, *wire.ParamReader) (*wire.Reply, error) {
	return &wire.Reply{Result: map[string]any{}, FD: -1, After: func(bool) { n.requestShutdown() }}, nil
}

func (n *node) Call(ctx context.Context, method string, params map[string]any) (*wire.Reply, error) {
	h, ok := methods[method]
	if !ok {
		return nil, wire.NewError(wire.CodeUnknownMethod, "no method %q", method)
	}
	return h(n, ctx, wire.NewParamReader(params))
}

func (n *node) Notification(method string, params map[string]any) {
	switch method {
	case "grant":
		p := wire.NewParamReader(params)
		id := p.Uint("listener", 0, math.MaxUint64)
		count := p.Uint("n", 0, math.MaxUint64)
		if p.Err != nil {
			helperLogf("ignoring grant: %s", p.Err.Message)
			return
		}
		n.mu.Lock()
		l := n.listeners[id]
		n.mu.Unlock()
		if l != nil { // a grant may cross a listener's closing; that is not an error
			l.grant(count)
		}
	case "close_conn":
		// The application closed its stream before the tailnet side ended: drop the tailnet
		// connection now rather than when the peer next speaks.
		p := wire.NewParamReader(params)
		id := p.Uint("conn", 0, math.MaxUint64)
		reset := p.OptBool("reset")
		if p.Err != nil {
			helperLogf("ignoring close_conn: %s", p.Err.Message)
			return
		}
		n.mu.Lock()
		b, r := n.conns[id], n.packets[id]
		delete(n.packets, id)
		n.mu.Unlock()
		switch {
		case reset:
			if b != nil {
				b.HostReset()
			}
			// The host holds its end open until this word (docs/protocol.md §6): sent
			// after the reset, and also for a conn that had already ended here.
			if err := wire.Notify(n.out, "conn_reset", map[string]any{"conn": id}, -1); err != nil {
				helperLogf("conn %d: sending conn_reset: %v", id, err)
			}
		case b != nil:
			b.HostClosed()
		}
		if r != nil {
			r.close()
		}
	}
	// Unknown notifications are ignored (docs/protocol.md §1).
}
