// Package timewait keeps a TCP connection from stalling on a 4-tuple that the other end still
// holds in TIME_WAIT, in both of a tsnet node's roles.
//
// The cause (docs/reliability.md, "A dial between two running nodes now and then never
// connects"): a gVisor netstack endpoint in TIME_WAIT hands a new SYN for its own 4-tuple only
// to a listening endpoint of the same stack, and silently drops it when there is none. tsnet
// has none: its listeners are fed by netstack's TCP forwarder, which never sees a segment that
// the demuxer delivered to the TIME_WAIT endpoint. So the SYN and every retransmission of it
// vanish until TIME_WAIT ends (60 s by default), and a client whose random ephemeral port
// happens to repeat a recent connection's — the server having closed first — waits that long.
//
// Server side, ShortenTimeWait makes the node's TIME_WAIT end at once, so that a new SYN meets
// no old endpoint and reaches the forwarder (what RFC 6191 and Linux achieve by accepting it in
// TIME_WAIT). Client side, Dial gives up a handshake that has no answer within a short bound
// and dials again from a new random port, inside the caller's deadline: the peer may be any
// tsnet node, whose TIME_WAIT this node cannot change.
//
// A zero TIME_WAIT has a cost of its own in the client's role: a port freed at once may be
// picked again at once, before the server has let go of the old connection, and the new SYN
// is then refused (docs/reliability.md, "A dial refused by a listening port"). DialTCP (ports.go)
// takes source ports in sequence, so that this node does not reuse a 4-tuple soon.
package timewait

import (
	"context"
	"fmt"
	"net"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"tailscale.com/tsnet"
	"tailscale.com/wgengine/netstack"
)

// Duration is the TIME_WAIT ShortenTimeWait sets. Zero: an endpoint that reaches TIME_WAIT
// is closed right away. What TIME_WAIT guards against hardly exists on a tailnet —
// WireGuard drops replayed packets, and the path reorders by milliseconds, not by the
// minutes of a wide-area network — and what it costs is the stall above. The one thing lost
// is the re-ACK of a peer's retransmitted FIN when this node's last ACK was lost: that peer,
// already closed by its application, gets a reset instead, which no application sees.
const Duration = 0

// ShortenTimeWait sets srv's netstack TIME_WAIT to Duration. srv must be started.
func ShortenTimeWait(srv *tsnet.Server) error { return SetTimeWait(srv, Duration) }

// SetTimeWait sets srv's netstack TIME_WAIT to d. srv must be started.
func SetTimeWait(srv *tsnet.Server, d time.Duration) error {
	ns, ok := srv.Sys().Netstack.GetOK()
	if !ok {
		return fmt.Errorf("tsnet has no netstack")
	}
	impl, ok := ns.(*netstack.Impl)
	if !ok {
		return fmt.Errorf("tsnet's netstack is a %T, not a *netstack.Impl", ns)
	}
	opt := tcpip.TCPTimeWaitTimeoutOption(d)
	if err := impl.SetTransportProtocolOption(tcp.ProtocolNumber, &opt); err != nil {
		return fmt.Errorf("setting netstack's TIME_WAIT: %v", err)
	}
	return nil
}

// FirstAttempt bounds the first handshake Dial waits for; each later attempt may take twice
// as long as the one before, and the last one the rest of the caller's deadline. One second
// is netstack's first SYN retransmission timeout: by then a healthy handshake has answered,
// or the stack itself would send the SYN again — to the same dead end, if that is the cause.
const FirstAttempt = time.Second

// Dial calls dial until it connects, with a fresh context for each attempt: FirstAttempt for
// the first, doubling after. An attempt that ran out of its own time is abandoned and a new
// one made (a new connection gets a new random source port, hence a new 4-tuple); any other
// error, or the end of ctx, ends Dial with that error. A late answer to an abandoned SYN finds
// no endpoint and is reset by the stack, so the server never accepts it.
func Dial(ctx context.Context, dial func(context.Context) (net.Conn, error)) (net.Conn, error) {
	return dialFrom(ctx, FirstAttempt, dial)
}

func dialFrom(ctx context.Context, bound time.Duration, dial func(context.Context) (net.Conn, error)) (net.Conn, error) {
	for {
		attemptCtx, cancel := context.WithTimeout(ctx, bound)
		c, err := dial(attemptCtx)
		attemptTimedOut := attemptCtx.Err() != nil
		cancel()
		if err == nil || ctx.Err() != nil || !attemptTimedOut {
			return c, err
		}
		bound *= 2
	}
}
