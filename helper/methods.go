package main

import (
	"context"
	"math"
	"time"

	"github.com/tsproc/tsproc/helper/internal/wire"
)

// The method table of docs/protocol.md §4 and the host's notifications. The handlers are in
// files named for what they do: start.go (start, up), listen.go, listen_kinds.go, dial.go,
// packet.go, ping.go and info.go (status, whois, logout; cert_domains is with the TLS listeners).

const (
	maxListeners   = 256
	defaultBacklog = 128
	maxBacklog     = 4096
	// maxTimeoutMS caps timeout_ms so that it cannot overflow a time.Duration; nothing
	// sensible waits 24 days.
	maxTimeoutMS = math.MaxInt32
	// localCallTimeout bounds calls to tsnet's in-process LocalAPI for methods that take no
	// timeout_ms (status, whois, and the status taken to explain a timeout).
	localCallTimeout = 5 * time.Second
	// logoutTimeout bounds logout, which talks to the control server.
	logoutTimeout = 15 * time.Second
)

func (n *node) Call(ctx context.Context, method string, params map[string]any) (*wire.Reply, error) {
	p := wire.NewParamReader(params)
	switch method {
	case "start":
		return n.start(p)
	case "up":
		return n.up(ctx, p)
	case "listen":
		return n.listen(p)
	case "close_listener":
		return n.closeListener(p)
	case "dial":
		return n.dial(ctx, p)
	case "status":
		return n.status(ctx)
	case "whois":
		return n.whois(ctx, p)
	case "logout":
		return n.logout(ctx)
	case "ping":
		return wire.OKReply(map[string]any{}), nil
	case "listen_tls":
		return n.listenTLS(ctx, p)
	case "listen_funnel":
		return n.listenFunnel(ctx, p)
	case "listen_any_port":
		return n.listenAnyPort(p)
	case "listen_packet":
		return n.listenPacket(p)
	case "dial_udp":
		return n.dialUDP(ctx, p)
	case "ping_peer":
		return n.pingPeer(ctx, p)
	case "cert_domains":
		return n.certDomains(ctx)
	case "cert_pair":
		return n.certPair(ctx, p)
	case "listen_service":
		return n.listenService(ctx, p)
	case "capture_pcap":
		return n.capturePcap(p)
	case "stop_capture":
		return n.stopCapture(p)
	case "bench_echo":
		return n.benchEcho()
	case "shutdown":
		// Answered first; the process then closes everything and exits (runNode).
		return &wire.Reply{Result: map[string]any{}, FD: -1, After: func(bool) { n.requestShutdown() }}, nil
	}
	return nil, wire.NewError(wire.CodeUnknownMethod, "no method %q", method)
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
				b.hostReset()
			}
			// The host holds its end open until this word (docs/protocol.md §6): sent
			// after the reset, and also for a conn that had already ended here.
			if err := wire.Notify(n.out, "conn_reset", map[string]any{"conn": id}, -1); err != nil {
				helperLogf("conn %d: sending conn_reset: %v", id, err)
			}
		case b != nil:
			b.hostClosed()
		}
		if r != nil {
			r.close()
		}
	}
	// Unknown notifications are ignored (docs/protocol.md §1).
}
