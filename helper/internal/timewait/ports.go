package timewait

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"reflect"
	"sync/atomic"
	"unsafe"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
	"tailscale.com/tsnet"
	"tailscale.com/wgengine/netstack"
)

// The connection refused by a listening port (docs/reliability.md, "A dial refused by a
// listening port"): with TIME_WAIT 0 (ShortenTimeWait) a client that closes first frees its
// source port the moment it sends its last ACK, and netstack's port picker (RFC 6056
// algorithm 1: a random start, no memory of recent ports) may hand that port to the very
// next dial. Its SYN then reaches the server while the server's endpoint for the same
// 4-tuple is still registered — in LAST_ACK, the last ACK queued but not yet processed. The
// demuxer queues the SYN to that endpoint; when the endpoint has processed the ACK and closed,
// gVisor drains its queue (tcp.handleConnected → drainClosingSegmentQueue →
// tryDeliverSegmentFromClosedEndpoint), finds no listening endpoint for the SYN (tsnet has
// none: its listeners are fed by the TCP forwarder) and answers it with a reset
// (replyWithReset): "connection was refused", with the listener open. The same happens when
// the server closed first and the SYN beats the end of its zero TIME_WAIT, only more rarely.
//
// DialTCP keeps this node's recently used 4-tuples from coming back at once, which is what
// the client's TIME_WAIT did before ShortenTimeWait made it 0, without keeping an endpoint or
// its port: it picks the source port itself, the next one of the stack's ephemeral range in
// a sequence shared by every dial (RFC 6056 algorithm 3's counter, without the hash), skipping
// ports in use. A port comes back only after the whole range has gone by — 49,536 dials with
// netstack's range, 50 s at a thousand dials a second — instead of, with a random pick, after
// as little as one. What is given up: the randomness of the source port, which
// defends a TCP connection against an off-path attacker guessing its 4-tuple to inject
// segments; on a tailnet an off-path attacker cannot inject anything (every packet is
// authenticated by WireGuard). Tried and rejected: a TIME_WAIT for dialled connections only
// (netstack's TIME_WAIT is one setting for the whole stack, and a server's TIME_WAIT is the
// stall ShortenTimeWait fixes); remembering each closed 4-tuple for a while (the endpoint
// frees its port when it is done, not when the application closes it, and the helper does not
// see that moment); retrying a refused dial (it would hide a real refusal's cause, and cost
// one more round trip for every dial to a port nobody listens on).
//
// What it does not cover: a client that is not tsproc and shortens its own TIME_WAIT, closing
// first (a stock tsnet keeps 60 s, and does not reuse the port that soon); a stock client
// whose random pick repeats, within the fraction of a millisecond before the server's zero
// TIME_WAIT ends, the port of a connection the server closed first (3 in 10,000 dials with a
// client range of 64 ports, 16 at once; the full range makes it about 800 times rarer); and
// this node's own dials that do not come through DialTCP (tsnet's internal ones), whose random
// port may be one the sequence is about to reach. Nor can a sequence help when the range is
// hardly larger than the connections open at once: then every free port is a recent one.

// nicID is netstack's only NIC (tailscale.com/wgengine/netstack's nicID).
const nicID = 1

// nextPort is the sequence DialTCP takes source ports from, modulo the stack's range; it
// starts at a random point so that a restarted helper does not begin again where its
// predecessor began.
var nextPort atomic.Uint32

func init() { nextPort.Store(rand.Uint32()) }

// ipstackField is netstack.Impl's gVisor stack, found once. netstack exports no accessor for
// it; TestNetstackStackIsFound fails if a Tailscale upgrade renames or retypes it, and until
// then DialTCP falls back to tsnet's own dial (random source ports).
var ipstackField = func() *reflect.StructField {
	f, ok := reflect.TypeFor[netstack.Impl]().FieldByName("ipstack")
	if !ok || f.Type != reflect.TypeFor[*stack.Stack]() {
		return nil
	}
	return &f
}()

// Stack returns srv's gVisor stack, or nil if it cannot be found. srv must be started.
func Stack(srv *tsnet.Server) *stack.Stack {
	ns, ok := srv.Sys().Netstack.GetOK()
	if !ok || ipstackField == nil {
		return nil
	}
	impl, ok := ns.(*netstack.Impl)
	if !ok || impl == nil {
		return nil
	}
	return *(**stack.Stack)(unsafe.Add(unsafe.Pointer(impl), ipstackField.Offset))
}

// DialTCP dials dst from srv's netstack as tsnet's own netstack dial does (bound to the
// node's address of dst's family), but from the next source port of the sequence (see
// above). dst must be a tailnet address (tsnet's Dialer.UseNetstackForIP).
func DialTCP(ctx context.Context, srv *tsnet.Server, dst netip.AddrPort) (net.Conn, error) {
	st := Stack(srv)
	if st == nil {
		d, ok := srv.Sys().Dialer.GetOK()
		if !ok || d.NetstackDialTCP == nil {
			return nil, errors.New("tsnet has no netstack dialer")
		}
		return d.NetstackDialTCP(ctx, dst)
	}
	v4, v6 := srv.TailscaleIPs()
	src, proto := v4, tcpip.NetworkProtocolNumber(ipv4.ProtocolNumber)
	if dst.Addr().Is6() {
		src, proto = v6, ipv6.ProtocolNumber
	}
	c, err := dialFromNextPort(ctx, st, src, dst, proto)
	if err != nil {
		return nil, err // a nil net.Conn, not a nil *gonet.TCPConn
	}
	return c, nil
}

// dialFromNextPort is gonet.DialTCPWithBind with the local port taken from nextPort.
func dialFromNextPort(ctx context.Context, st *stack.Stack, src netip.Addr, dst netip.AddrPort, proto tcpip.NetworkProtocolNumber) (*gonet.TCPConn, error) {
	remote := tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFromSlice(dst.Addr().AsSlice()), Port: dst.Port()}
	var wq waiter.Queue
	ep, terr := st.NewEndpoint(tcp.ProtocolNumber, proto, &wq)
	if terr != nil {
		return nil, errors.New(terr.String())
	}
	waitEntry, notifyCh := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&waitEntry)
	defer wq.EventUnregister(&waitEntry)
	if err := ctx.Err(); err != nil {
		ep.Close()
		return nil, err
	}
	if terr := bindNextPort(st, ep, src); terr != nil {
		ep.Close()
		return nil, &net.OpError{Op: "bind", Net: "tcp", Addr: net.TCPAddrFromAddrPort(dst), Err: errors.New(terr.String())}
	}
	terr = ep.Connect(remote)
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			ep.Close()
			return nil, ctx.Err()
		case <-notifyCh:
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		return nil, &net.OpError{Op: "connect", Net: "tcp", Addr: net.TCPAddrFromAddrPort(dst), Err: errors.New(terr.String())}
	}
	return gonet.NewTCPConn(&wq, ep), nil
}

// bindNextPort binds ep to src and the first free port of the sequence, trying at most the
// whole range.
func bindNextPort(st *stack.Stack, ep tcpip.Endpoint, src netip.Addr) tcpip.Error {
	first, last := st.PortRange()
	n := uint32(last) - uint32(first) + 1
	local := tcpip.FullAddress{NIC: nicID}
	if src.IsValid() {
		local.Addr = tcpip.AddrFromSlice(src.AsSlice())
	}
	for range n {
		local.Port = first + uint16(nextPort.Add(1)%n)
		err := ep.Bind(local)
		if _, inUse := err.(*tcpip.ErrPortInUse); !inUse {
			return err
		}
	}
	return &tcpip.ErrNoPortAvailable{}
}
