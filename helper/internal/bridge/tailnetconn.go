package bridge

// What the helper does to, and learns from, tsnet's kinds of net.Conn: Reset, and the
// FunnelSource of an accepted connection. Both look through the wrappers tsnet adds.

import (
	"crypto/tls"
	"net"
	"net/netip"
	"reflect"
	"unsafe"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"tailscale.com/ipn"
)

// Reset closes a tailnet connection abortively: the peer reads a connection reset
// (ECONNRESET), not the EOF of an orderly close, and whatever is still queued either way is
// discarded. It is how the helper ends a connection the host dropped rather than closed
// (close_conn with reset, docs/protocol.md §6), one that nobody will accept, and one cut off
// because the helper is shutting down: a peer must never take any of those for a complete
// transfer. It reports whether a reset was sent; for a kind of connection it cannot reset it
// closes c in order instead.
func Reset(c net.Conn) bool {
	if tc, ok := c.(*tls.Conn); ok {
		// No close_notify: the point is that the peer sees the transport break.
		c = tc.NetConn()
	}
	switch c := c.(type) {
	case *gonet.TCPConn:
		ep := gonetEndpoint(c)
		if ep == nil {
			c.Close()
			return false
		}
		// As SO_LINGER with a zero timeout on a kernel socket: gVisor's Close then sends a
		// RST from any connected state instead of a FIN.
		ep.SocketOptions().SetLinger(tcpip.LingerOption{Enabled: true})
		ep.Close()
		return true
	case *net.TCPConn:
		c.SetLinger(0)
		c.Close()
		return true
	default:
		c.Close()
		return false
	}
}

// gonetEndpointField is the offset of gonet.TCPConn's endpoint, found once. gonet exports no
// accessor for it (the only other way to a RST is closing with unread data, which the
// helper cannot arrange), so Reset reads the unexported field; TestResetFindsTheNetstackEndpoint
// fails if a gVisor upgrade renames or retypes it, and until then Reset falls back to an
// orderly close.
var gonetEndpointField = func() *reflect.StructField {
	f, ok := reflect.TypeFor[gonet.TCPConn]().FieldByName("ep")
	if !ok || f.Type != reflect.TypeFor[tcpip.Endpoint]() {
		return nil
	}
	return &f
}()

// gonetEndpoint returns c's netstack endpoint, or nil if this gVisor keeps it elsewhere.
func gonetEndpoint(c *gonet.TCPConn) tcpip.Endpoint {
	if gonetEndpointField == nil {
		return nil
	}
	p := unsafe.Add(unsafe.Pointer(c), gonetEndpointField.Offset)
	return *(*tcpip.Endpoint)(p)
}

// FunnelSource reports the public client a Funnel connection came from: tsnet's Funnel
// listener gives TLS connections over an ipn.FunnelConn whose Src is that client.
func FunnelSource(c net.Conn) (netip.AddrPort, bool) {
	for c != nil {
		if f, ok := c.(*ipn.FunnelConn); ok {
			return f.Src, true
		}
		nc, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		c = nc.NetConn()
	}
	return netip.AddrPort{}, false
}
