// Package ingress plays Tailscale Funnel's part of the internet for the local tailnet: a
// tailnet node like Tailscale's ingress nodes, and loopback TCP ports that stand for the public
// ports 443, 8443 and 10000 of the tailnet's nodes.
//
// A client connects to one of those ports and starts TLS with the node's name as SNI. The
// relay reads the name from the ClientHello, asks that node's peerAPI for an ingress
// connection exactly as a real ingress node does (POST /v0/ingress with Tailscale-Ingress-Src
// and Tailscale-Ingress-Target, answered by 101 Switching Protocols), and then copies the raw
// bytes both ways: TLS is between the client and the node, never terminated here.
package ingress

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"tailscale.com/ipn/ipnstate"
	"tailscale.com/ipn/store/mem"
	"tailscale.com/tsnet"
	"tailscale.com/types/key"
	"tailscale.com/types/logger"
)

// Tag is the ACL tag of the ingress node, so that a node's status says which peer it is.
const Tag = "tag:funnel-ingress"

// Hostname is the ingress node's hostname.
const Hostname = "funnel-ingress"

// Ports are the public ports Funnel offers (tailcfg's funnel-ports capability grants them).
var Ports = []int{443, 8443, 10000}

// Config configures a Relay.
type Config struct {
	ControlURL string     // the local control server
	Dir        string     // state directory of the ingress node (tsnet needs one; state is in memory)
	Addr       netip.Addr // loopback address of the public ports
	Logf       logger.Logf
	TsnetLogf  logger.Logf // tsnet's own log lines; nil discards them
}

// Relay is a running ingress node with its public ports.
type Relay struct {
	srv   *tsnet.Server
	logf  logger.Logf
	lns   map[int]net.Listener // public port → loopback listener
	ports map[int]int          // public port → loopback port
	key   key.NodePublic

	ctx    context.Context // cancelled by Close: ends every relayed connection
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Start brings the ingress node up on the tailnet (within ctx) and opens the public ports.
func Start(ctx context.Context, cfg Config) (_ *Relay, err error) {
	tsLogf := cfg.TsnetLogf
	if tsLogf == nil {
		tsLogf = logger.Discard
	}
	r := &Relay{
		logf:  cfg.Logf,
		lns:   map[int]net.Listener{},
		ports: map[int]int{},
		srv: &tsnet.Server{
			Hostname:      Hostname,
			Dir:           cfg.Dir,
			Store:         new(mem.Store),
			ControlURL:    cfg.ControlURL,
			Ephemeral:     true,
			AdvertiseTags: []string{Tag},
			Logf:          tsLogf,
			UserLogf:      tsLogf,
		},
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			r.Close()
		}
	}()
	st, err := r.srv.Up(ctx)
	if err != nil {
		return nil, fmt.Errorf("ingress node: %w", err)
	}
	r.key = st.Self.PublicKey
	for _, p := range Ports {
		ln, err := net.Listen("tcp", netip.AddrPortFrom(cfg.Addr, 0).String())
		if err != nil {
			return nil, fmt.Errorf("ingress: listen for public port %d: %w", p, err)
		}
		r.lns[p] = ln
		r.ports[p] = ln.Addr().(*net.TCPAddr).Port
	}
	for p, ln := range r.lns {
		r.wg.Go(func() { r.serve(ln, p) })
	}
	return r, nil
}

// NodeKey is the ingress node's key, for the control server to mark it as an ingress peer.
func (r *Relay) NodeKey() key.NodePublic { return r.key }

// Ports maps each public port to the loopback port that stands for it.
func (r *Relay) Ports() map[int]int { return r.ports }

// Close closes the public ports, ends every relayed connection, waits for them, and takes
// the ingress node off the tailnet.
func (r *Relay) Close() {
	r.cancel()
	for _, ln := range r.lns {
		ln.Close()
	}
	r.wg.Wait()
	r.srv.Close()
}

func (r *Relay) serve(ln net.Listener, publicPort int) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		r.wg.Go(func() {
			if err := r.relay(c, publicPort); err != nil {
				r.logf("funnel connection from %v to port %d: %v", c.RemoteAddr(), publicPort, err)
			}
		})
	}
}

// handshakeTimeout bounds the ClientHello and the ingress request, as a real ingress would,
// and the wait for a node that is still coming up (peerAPIFor, relay): on a loaded machine a
// node's start, its first path from this node and its Funnel listener take several seconds.
const handshakeTimeout = 20 * time.Second

// relay serves one public connection c: it finds the node from the SNI, gets an ingress
// connection to it and copies both ways until both directions end or Close is called.
func (r *Relay) relay(c net.Conn, publicPort int) error {
	defer c.Close()
	c.SetDeadline(time.Now().Add(handshakeTimeout))
	sni, hello, err := readSNI(c)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.ctx, handshakeTimeout)
	defer cancel()
	peerAPI, waited, err := r.peerAPIFor(ctx, sni)
	if err != nil {
		return err
	}
	src := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	target := net.JoinHostPort(sni, strconv.Itoa(publicPort))
	var up net.Conn
	var br *bufio.Reader
	for {
		up, br, err = r.ingressConn(ctx, peerAPI, src, target)
		var refused refusedError
		if err == nil || !waited || !errors.As(err, &refused) {
			break
		}
		// The node was not on the tailnet yet when the client came: it may refuse until it
		// has set up its Funnel listener, a moment after it appeared. Ask again, within the
		// client's handshake bound.
		select {
		case <-ctx.Done():
			return err
		case <-time.After(peerAPIPoll):
		}
	}
	if err != nil {
		return err
	}
	defer up.Close()
	c.SetDeadline(time.Time{})
	up.SetDeadline(time.Time{})
	if _, err := up.Write(hello); err != nil {
		return err
	}
	stop := context.AfterFunc(r.ctx, func() { c.Close(); up.Close() })
	defer stop()
	var wg sync.WaitGroup
	wg.Go(func() { copyHalf(up, c) })
	copyHalf(c, io.MultiReader(br, up)) // br may hold bytes read past the 101 answer
	wg.Wait()
	return nil
}

// refusedError is a node's refusal of an ingress connection: no Funnel listener for the
// target, or Funnel not allowed. The client sees its connection closed, as with a real ingress.
type refusedError struct{ sni, target, status string }

func (e refusedError) Error() string {
	return fmt.Sprintf("%s refused the ingress connection for %s: %s", e.sni, e.target, e.status)
}

// ingressConn asks the node's peerAPI for an ingress connection from src to target, as a real
// ingress node does (POST /v0/ingress, answered by 101 Switching Protocols). It returns the
// connection and its reader, which may hold bytes read past the answer.
func (r *Relay) ingressConn(ctx context.Context, peerAPI string, src netip.AddrPort, target string) (net.Conn, *bufio.Reader, error) {
	sni, _, _ := net.SplitHostPort(target)
	up, err := r.srv.Dial(ctx, "tcp", peerAPI)
	if err != nil {
		return nil, nil, fmt.Errorf("dial %s's peerAPI %s: %w", sni, peerAPI, err)
	}
	up.SetDeadline(time.Now().Add(handshakeTimeout))
	req, _ := http.NewRequest("POST", "/v0/ingress", nil)
	req.Host = peerAPI
	req.Header.Set("Tailscale-Ingress-Src", netip.AddrPortFrom(src.Addr().Unmap(), src.Port()).String())
	req.Header.Set("Tailscale-Ingress-Target", target)
	if err := req.Write(up); err != nil {
		up.Close()
		return nil, nil, fmt.Errorf("ingress request: %w", err)
	}
	br := bufio.NewReader(up)
	res, err := http.ReadResponse(br, req)
	if err != nil {
		up.Close()
		return nil, nil, fmt.Errorf("ingress answer: %w", err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusSwitchingProtocols {
		up.Close()
		return nil, nil, refusedError{sni, target, res.Status}
	}
	return up, br, nil
}

// copyHalf copies one direction, then half-closes dst's write side so the other end sees EOF
// while the opposite direction goes on.
func copyHalf(dst net.Conn, src io.Reader) {
	_, _ = io.Copy(dst, src)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	} else {
		dst.Close()
	}
}

// peerAPIFor finds the peerAPI address of the node whose MagicDNS name is sni (and whether it
// had to wait for it), waiting
// (within ctx) for it to appear: a node that has just come up is running before this node's
// netmap has it, and its peerAPI port reaches the netmap in a later update still (the node
// reports it once its peerAPI listens). A client that connects in that moment — as one does
// right after listen_funnel returns — would otherwise have its connection closed.
func (r *Relay) peerAPIFor(ctx context.Context, sni string) (addr string, waited bool, err error) {
	lc, err := r.srv.LocalClient()
	if err != nil {
		return "", false, err
	}
	for {
		st, err := lc.Status(ctx)
		if err != nil {
			return "", waited, fmt.Errorf("ingress status: %w", err)
		}
		addr, lookErr := findPeerAPI(st, sni)
		if lookErr == nil {
			return addr, waited, nil
		}
		waited = true
		select {
		case <-ctx.Done():
			return "", waited, lookErr
		case <-time.After(peerAPIPoll):
		}
	}
}

// peerAPIPoll is how often peerAPIFor looks at the netmap again.
const peerAPIPoll = 20 * time.Millisecond

// findPeerAPI is the peerAPI address of the peer named sni in st.
func findPeerAPI(st *ipnstate.Status, sni string) (string, error) {
	var peer *ipnstate.PeerStatus
	for _, p := range st.Peer {
		if strings.EqualFold(strings.TrimSuffix(p.DNSName, "."), sni) {
			peer = p
		}
	}
	if peer == nil {
		return "", fmt.Errorf("no node named %q on the tailnet", sni)
	}
	for _, u := range peer.PeerAPIURL {
		if hp, ok := strings.CutPrefix(u, "http://"); ok {
			return hp, nil
		}
	}
	return "", fmt.Errorf("node %q has no peerAPI", sni)
}

// errHelloRead stops the TLS server handshake readSNI runs once it has the ClientHello.
var errHelloRead = errors.New("ClientHello read")

// readSNI reads the TLS ClientHello from c and returns its server name and the bytes read,
// which the caller must send on before anything else.
func readSNI(c net.Conn) (string, []byte, error) {
	var buf bytes.Buffer
	var sni string
	err := tls.Server(readOnlyConn{c, io.TeeReader(c, &buf)}, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			sni = h.ServerName
			return nil, errHelloRead
		},
	}).Handshake()
	if !errors.Is(err, errHelloRead) {
		return "", nil, fmt.Errorf("reading the TLS ClientHello: %w", err)
	}
	if sni == "" {
		return "", nil, errors.New("the TLS ClientHello names no server (SNI): set it to the node's name")
	}
	return strings.ToLower(sni), buf.Bytes(), nil
}

// readOnlyConn lets crypto/tls read a ClientHello without writing anything back: the real
// handshake is the node's.
type readOnlyConn struct {
	net.Conn
	r io.Reader
}

func (c readOnlyConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c readOnlyConn) Write(p []byte) (int, error) { return len(p), nil }
