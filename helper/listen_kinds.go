package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"

	"tailscale.com/tailcfg"
	"tailscale.com/tsnet"

	"github.com/tsproc/tsproc/helper/internal/wire"
)

// The other kinds of TCP listener: TLS (certificates from the tailnet), Funnel (reachable from
// the internet) and the any-port listener (tsnet's fallback TCP handler). They all hand their
// connections over through openListener's grant-based pump, like listen.

// requireCerts explains, before tsnet is asked, why a TLS or Funnel listener cannot work: the
// tailnet issues no HTTPS certificates to this node (HTTPS disabled in the admin console, or a
// control server that has none, like the local test tailnet).
func requireCerts(ctx context.Context, n *node) (*tsnet.Server, error) {
	srv, _, st, err := n.startedStatus(ctx)
	if err != nil {
		return nil, err
	}
	if st.BackendState != "Running" {
		return nil, wire.NewError(wire.CodeNotRunning, "node is in state %s", st.BackendState)
	}
	// The "https" capability is how a control server says it issues certificates to this
	// node (HTTPS enabled for the tailnet); cert domains alone are not enough.
	if len(st.CertDomains) == 0 || st.Self == nil || !st.Self.HasCap(tailcfg.CapabilityHTTPS) {
		return nil, wire.NewError(wire.CodeTLSUnavailable, "this tailnet has no HTTPS certificates for "+
			"this node: enable MagicDNS and HTTPS certificates in the tailnet's admin console "+
			"(a local test tailnet has none)")
	}
	n.mu.Lock()
	localNoACME := n.localNoACME
	n.mu.Unlock()
	if localNoACME {
		// tsnet would ask Let's Encrypt (and the system's DNS) for a name only our loopback
		// control server knows.
		return nil, wire.NewError(wire.CodeTLSUnavailable, "this node is on a local control server but "+
			"has no ACME server to get certificates from: create it with LocalTailnet.node() "+
			"(start's acme_directory_url)")
	}
	return srv, nil
}

func (n *node) listenTLS(ctx context.Context, p *wire.ParamReader) (*wire.Reply, error) {
	return n.listenWithCerts(ctx, p, wire.CodeTLSUnavailable, func(srv *tsnet.Server, addr string) (net.Listener, error) {
		return srv.ListenTLS("tcp", addr)
	})
}

func (n *node) listenFunnel(ctx context.Context, p *wire.ParamReader) (*wire.Reply, error) {
	var opts []tsnet.FunnelOption
	if p.OptBool("funnel_only") {
		opts = append(opts, tsnet.FunnelOnly())
	}
	return n.listenWithCerts(ctx, p, wire.CodeFunnelUnavailable, func(srv *tsnet.Server, addr string) (net.Listener, error) {
		return srv.ListenFunnel("tcp", addr, opts...)
	})
}

// listenWithCerts is listen_tls and listen_funnel: the same parameters and checks, then open
// makes the tsnet listener; its errors other than a port in use get the code unavailable.
// timeout_ms bounds the checks, which ask tsnet's LocalAPI; open itself does not wait (the
// certificate is fetched at the first handshake).
func (n *node) listenWithCerts(ctx context.Context, p *wire.ParamReader, unavailable string,
	open func(srv *tsnet.Server, addr string) (net.Listener, error)) (*wire.Reply, error) {
	timeoutMS := readTimeout(p)
	port := p.Uint("port", 1, 65535)
	backlog := p.OptUint("backlog", 1, maxBacklog, defaultBacklog)
	if p.Err != nil {
		return nil, p.Err
	}
	if err := n.checkListenerRoom(); err != nil {
		return nil, err
	}
	callCtx, cancel := callContext(ctx, timeoutMS)
	defer cancel()
	srv, err := requireCerts(callCtx, n)
	if err != nil {
		return nil, n.callError(ctx, callCtx, "listen on port "+strconv.FormatUint(port, 10), timeoutMS, err)
	}
	ln, err := open(srv, ":"+strconv.FormatUint(port, 10))
	if err != nil {
		return nil, listenError(port, err, unavailable)
	}
	return n.openListener(ln, int(backlog))
}

// listenError maps tsnet's listen errors: a port in use, or the feature being unavailable.
func listenError(port uint64, err error, unavailable string) error {
	if isPortInUse(err) {
		return wire.NewError(wire.CodeAddressInUse, "port %d: %v", port, err)
	}
	return wire.NewError(unavailable, "port %d: %v", port, err)
}

func (n *node) listenAnyPort(_ context.Context, p *wire.ParamReader) (*wire.Reply, error) {
	backlog := p.OptUint("backlog", 1, maxBacklog, defaultBacklog)
	if p.Err != nil {
		return nil, p.Err
	}
	srv, _, err := n.requireRunning()
	if err != nil {
		return nil, err
	}
	if err := n.checkListenerRoom(); err != nil {
		return nil, err
	}
	return n.openListener(newFallbackListener(srv, int(backlog)), int(backlog))
}

// certPair returns the certificate chain and key for a cert domain, issuing one if needed: a
// new certificate takes a few round trips to the ACME server, within timeout_ms.
func (n *node) certPair(ctx context.Context, p *wire.ParamReader) (*wire.Reply, error) {
	timeoutMS := readTimeout(p)
	domain := p.String("domain")
	if p.Err != nil {
		return nil, p.Err
	}
	callCtx, cancel := callContext(ctx, timeoutMS)
	defer cancel()
	what := fmt.Sprintf("cert_pair %q", domain)
	if _, err := requireCerts(callCtx, n); err != nil {
		return nil, n.callError(ctx, callCtx, what, timeoutMS, err)
	}
	_, lc := n.server()
	certPEM, keyPEM, err := lc.CertPair(callCtx, domain)
	if err != nil {
		return nil, n.callError(ctx, callCtx, what, timeoutMS,
			wire.NewError(wire.CodeTLSUnavailable, "no certificate for %q: %v", domain, err))
	}
	return wire.OKReply(map[string]any{"cert_pem": certPEM, "key_pem": keyPEM}), nil
}

// certDomains lists the names the tailnet will issue certificates for: none without the
// "https" capability, whatever DNS names the netmap carries.
func (n *node) certDomains(ctx context.Context, p *wire.ParamReader) (*wire.Reply, error) {
	timeoutMS := readTimeout(p)
	if p.Err != nil {
		return nil, p.Err
	}
	_, lc, err := n.requireStarted()
	if err != nil {
		return nil, err
	}
	callCtx, cancel := callContext(ctx, timeoutMS)
	defer cancel()
	st, err := lc.StatusWithoutPeers(callCtx)
	if err != nil {
		return nil, n.callError(ctx, callCtx, "cert_domains", timeoutMS, wire.NewError(wire.CodeInternal, "status: %v", err))
	}
	domains := []string{}
	if st.Self != nil && st.Self.HasCap(tailcfg.CapabilityHTTPS) {
		domains = append(domains, st.CertDomains...)
	}
	return wire.OKReply(map[string]any{"domains": domains}), nil
}

// fallbackListener is a net.Listener fed by tsnet's fallback TCP handler: it gets the
// connections to every port of this node that no other listener holds. Each connection's
// LocalAddr is the address the peer dialled.
type fallbackListener struct {
	conns      chan net.Conn
	closed     chan struct{}
	closeOnce  sync.Once
	unregister func()
}

func newFallbackListener(srv *tsnet.Server, queue int) *fallbackListener {
	fl := &fallbackListener{conns: make(chan net.Conn, queue), closed: make(chan struct{})}
	fl.unregister = srv.RegisterFallbackTCPHandler(func(src, dst netip.AddrPort) (func(net.Conn), bool) {
		select {
		case <-fl.closed:
			return nil, false
		default:
		}
		// The decision is taken before the handshake completes: refuse (the peer sees a reset)
		// when as many connections already wait as the backlog allows, instead of queueing
		// without bound.
		if len(fl.conns) >= cap(fl.conns) {
			return nil, false
		}
		return func(c net.Conn) {
			// netstack removes a subnet-routed destination address from its stack when this
			// handler returns (wgengine/netstack acceptTCP), which breaks the connection: hold
			// the handler until the connection is closed.
			hc := &heldConn{Conn: c, closed: make(chan struct{})}
			select {
			case fl.conns <- hc:
			case <-fl.closed:
				c.Close()
				return
			}
			<-hc.closed
		}, true
	})
	return fl
}

func (fl *fallbackListener) Accept() (net.Conn, error) {
	select {
	case c := <-fl.conns:
		return c, nil
	case <-fl.closed:
		return nil, net.ErrClosed
	}
}

func (fl *fallbackListener) Close() error {
	fl.closeOnce.Do(func() {
		close(fl.closed)
		fl.unregister()
		for {
			select {
			case c := <-fl.conns:
				c.Close()
			default:
				return
			}
		}
	})
	return nil
}

func (fl *fallbackListener) Addr() net.Addr { return anyPortAddr{} }

// anyPortAddr names the any-port listener's address: every port of the node's addresses.
type anyPortAddr struct{}

func (anyPortAddr) Network() string { return "tcp" }
func (anyPortAddr) String() string  { return ":*" }

// heldConn is a connection whose Close releases the fallback handler that holds it.
type heldConn struct {
	net.Conn
	once   sync.Once
	closed chan struct{}
}

func (c *heldConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.closed) })
	return err
}

// CloseWrite half-closes, as the bridge needs, when the connection can.
func (c *heldConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}
