package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tsproc/tsproc/helper/internal/bridge"
	"github.com/tsproc/tsproc/helper/internal/socks5"
	"github.com/tsproc/tsproc/helper/internal/wire"
)

// forward, close_forward (docs/protocol.md §4a): the host makes a listening socket on this
// machine — a Unix socket in a private directory, or loopback TCP — and passes it here once
// per helper. The helper accepts on it and carries each connection to a tailnet target (kind
// "tcp", like ssh -L) or serves SOCKS5 CONNECT on it (kind "socks5"). Bytes go kernel socket ⇄
// Go ⇄ netstack and never through the host, and no message crosses the control channel per
// connection.
//
// The host keeps the socket (and its path) for as long as the forward exists: across helper
// restarts, connections wait in the kernel's backlog for the next helper. The helper never
// calls listen(2) (internal/nolisten forbids it): accepting on a socket that is already
// listening is all it does.

const (
	maxForwards = 256
	// socksNegotiateTimeout bounds a SOCKS5 client's greeting, credential and request.
	socksNegotiateTimeout = 10 * time.Second
	// nodeWaitPoll is how often a connection waiting for the node to run looks again.
	nodeWaitPoll = 50 * time.Millisecond
)

// forwardTable is the node's forwards. Its zero value is ready.
type forwardTable struct {
	mu     sync.Mutex
	closed bool
	next   uint64
	byID   map[uint64]*forward
}

type forward struct {
	id     uint64
	n      *node
	ln     net.Listener
	isUnix bool
	kind   string // "tcp" or "socks5"
	host   string // kind "tcp": the target
	port   uint16
	user   string // kind "socks5": the credential
	pass   string
	wait   time.Duration // how long a connection waits for the node and its dial

	ctx    context.Context // cancelled by close: dials in progress give up
	cancel context.CancelFunc
	wg     sync.WaitGroup // the accept loop and every connection

	mu     sync.Mutex
	closed bool
	conns  map[*forwardConn]struct{}
}

func (n *node) forward(_ context.Context, p *wire.ParamReader) (*wire.Reply, error) {
	fd := p.FD("fd")
	if fd >= 0 {
		defer func() {
			if fd >= 0 {
				unix.Close(fd)
			}
		}()
	}
	kind := p.String("kind")
	host := p.OptString("host")
	port := p.OptUint("port", 0, 65535, 0)
	user := p.OptString("username")
	pass := p.OptString("password")
	timeoutMS := p.Uint("conn_timeout_ms", 1, maxTimeoutMS)
	if p.Err != nil {
		return nil, p.Err
	}
	switch kind {
	case "tcp":
		if host == "" || len(host) > 253 || port == 0 {
			return nil, wire.NewError(wire.CodeBadRequest, `kind "tcp" needs "host" (1 to 253 characters) and "port" (1 to 65535)`)
		}
	case "socks5":
		// RFC 1929 carries each in one length byte.
		if user == "" || len(user) > 255 || pass == "" || len(pass) > 255 {
			return nil, wire.NewError(wire.CodeBadRequest, `kind "socks5" needs "username" and "password" of 1 to 255 bytes`)
		}
	default:
		return nil, wire.NewError(wire.CodeBadRequest, `"kind" must be "tcp" or "socks5"`)
	}
	if _, _, err := n.requireRunning(); err != nil {
		return nil, err
	}
	ln, isUnix, err := listenerFromFD(fd)
	fd = -1 // listenerFromFD owns it now
	if err != nil {
		return nil, wire.NewError(wire.CodeBadRequest, "%v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &forward{
		n: n, ln: ln, isUnix: isUnix, kind: kind, host: host, port: uint16(port),
		user: user, pass: pass, wait: time.Duration(timeoutMS) * time.Millisecond,
		ctx: ctx, cancel: cancel, conns: make(map[*forwardConn]struct{}),
	}

	t := &n.forwards
	t.mu.Lock()
	switch {
	case t.closed:
		err = wire.NewError(wire.CodeInternal, "helper is shutting down")
	case len(t.byID) >= maxForwards:
		err = wire.NewError(wire.CodeLimit, "the node already has %d forwards", maxForwards)
	default:
		if t.byID == nil {
			t.byID = make(map[uint64]*forward)
		}
		t.next++
		f.id = t.next
		t.byID[f.id] = f
		f.wg.Add(1)
	}
	t.mu.Unlock()
	if err != nil {
		cancel()
		ln.Close()
		return nil, err
	}
	go func() {
		defer f.wg.Done()
		f.serve()
	}()
	return wire.OKReply(map[string]any{"forward": f.id, "addr": ln.Addr().String()}), nil
}

func (n *node) closeForward(_ context.Context, p *wire.ParamReader) (*wire.Reply, error) {
	return closeByID(p, "forward", &n.forwards.mu, &n.forwards.byID)
}

// closeAll closes every forward (the node is closing) and keeps new ones from being made.
func (t *forwardTable) closeAll() {
	t.mu.Lock()
	t.closed = true
	fs := takeAll(t.byID)
	t.mu.Unlock()
	for _, f := range fs {
		f.close()
	}
}

// listenerFromFD wraps a listening socket the host passed. Only a Unix stream socket or a TCP
// socket bound to a loopback address will do: a forward is for this machine's processes.
func listenerFromFD(fd int) (net.Listener, bool, error) {
	accepting, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil || accepting == 0 {
		unix.Close(fd)
		return nil, false, errors.New(`"fd" must be a listening socket`)
	}
	f := os.NewFile(uintptr(fd), "tsproc-forward")
	ln, err := net.FileListener(f) // a dup, in the runtime poller
	f.Close()
	if err != nil {
		return nil, false, fmt.Errorf(`"fd": %w`, err)
	}
	switch l := ln.(type) {
	case *net.UnixListener:
		// The host unlinks the path when the forward ends; this copy must not (its Close
		// would unlink it under a forward a later helper serves).
		l.SetUnlinkOnClose(false)
		return l, true, nil
	case *net.TCPListener:
		if a, ok := l.Addr().(*net.TCPAddr); ok && a.IP.IsLoopback() {
			return l, false, nil
		}
	}
	ln.Close()
	return nil, false, fmt.Errorf(`"fd" must be a Unix socket or a TCP socket on a loopback address, not %s`, ln.Addr())
}

// serve accepts until the forward is closed. Errors such as running out of fds are waited
// out with a growing pause, as net/http does, rather than ending the forward.
func (f *forward) serve() {
	pause := 5 * time.Millisecond
	for {
		c, err := f.ln.Accept()
		if err != nil {
			if f.isClosed() || errors.Is(err, net.ErrClosed) || errors.Is(err, unix.EINVAL) {
				return // closed here, or the host shut the socket down
			}
			helperLogf("forward %d: accept: %v; retrying in %v", f.id, err, pause)
			select {
			case <-f.ctx.Done():
				return
			case <-time.After(pause):
			}
			pause = min(2*pause, time.Second)
			continue
		}
		pause = 5 * time.Millisecond
		setSendBuf(c)
		fc := &forwardConn{local: c}
		f.mu.Lock()
		if f.closed {
			f.mu.Unlock()
			fc.abort()
			return
		}
		f.conns[fc] = struct{}{}
		f.wg.Add(1)
		f.mu.Unlock()
		go func() {
			defer f.wg.Done()
			f.handle(fc)
			f.mu.Lock()
			delete(f.conns, fc)
			f.mu.Unlock()
		}()
	}
}

func (f *forward) isClosed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}

// close stops accepting, resets every connection of the forward and waits for its goroutines.
// The listening socket itself stays open in the host, which closes (and unlinks) it.
func (f *forward) close() {
	f.mu.Lock()
	f.closed = true
	conns := make([]*forwardConn, 0, len(f.conns))
	for fc := range f.conns {
		conns = append(conns, fc)
	}
	f.mu.Unlock()
	f.cancel()
	f.ln.Close()
	for _, fc := range conns {
		fc.abort()
	}
	f.wg.Wait()
}

// handle carries one accepted connection: it checks who connected, finds the target (the
// forward's, or the SOCKS5 request's), dials it and pumps. A connection that cannot be carried
// is reset, never closed in order: a client must not take an empty answer for a complete one.
func (f *forward) handle(fc *forwardConn) {
	if f.isUnix {
		uid, err := peerUID(fc.local.(*net.UnixConn))
		if err != nil || uid != uint32(os.Getuid()) {
			// Another local user must not ride this node (the socket's 0600 mode says the
			// same; this holds even if someone loosens it).
			if err == nil {
				err = fmt.Errorf("uid %d is not this node's (%d)", uid, os.Getuid())
			}
			helperLogf("forward %d: refused a connection: %v", f.id, err)
			fc.abort()
			return
		}
	}
	host, port := f.host, f.port
	if f.kind == "socks5" {
		fc.local.SetDeadline(time.Now().Add(socksNegotiateTimeout))
		req, err := socks5.Negotiate(fc.local, f.user, f.pass)
		if err != nil {
			// The client has its answer (a refused method, credential or command); closing
			// in order lets it read that answer. The error never contains the credential.
			helperLogf("forward %d: SOCKS5 client refused: %v", f.id, err)
			fc.closeGently()
			return
		}
		fc.local.SetDeadline(time.Time{})
		host, port = req.Host, req.Port
	} else {
		fc.setLingerZero()
	}

	ctx, cancel := context.WithTimeout(f.ctx, f.wait)
	tn, code, err := f.n.dialForward(ctx, host, port)
	cancel()
	if err != nil {
		helperLogf("forward %d: %s: %v", f.id, net.JoinHostPort(host, strconv.Itoa(int(port))), err)
		if f.kind == "socks5" {
			socks5.WriteReply(fc.local, code)
			fc.closeGently()
			return
		}
		fc.abort()
		return
	}
	if f.kind == "socks5" {
		if err := socks5.WriteReply(fc.local, socks5.Succeeded); err != nil {
			bridge.Reset(tn)
			fc.abort()
			return
		}
		fc.setLingerZero()
	}
	if !fc.attach(tn) {
		return // the forward closed meanwhile: attach reset tn
	}
	fc.pump()
}

// dialForward waits (within ctx) for the node to be able to dial, resolves host with the
// node's own resolver and dials it through netstack, as dial does. A failure comes with the
// SOCKS5 reply code that says why.
func (n *node) dialForward(ctx context.Context, host string, port uint16) (net.Conn, byte, error) {
	for {
		_, _, err := n.dialableServer(ctx)
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, socks5.NetworkUnreachable, fmt.Errorf("the node is not running: %v", err)
		case <-time.After(nodeWaitPoll):
		}
	}
	srv, lc := n.server()
	ip, err := n.resolver.resolve(ctx, srv, lc, host)
	if err != nil {
		var refusal *resolveRefusal
		switch {
		case !errors.As(err, &refusal):
			return nil, socks5.GeneralFailure, err
		case refusal.unknownHost && n.isTailnetName(ctx, host):
			return nil, socks5.HostUnreachable, err
		}
		// An address off the tailnet, or a name that is not a tailnet name: never dialled.
		return nil, socks5.NotAllowed, err
	}
	n.paths.await(ctx, srv, lc, ip)
	c, err := dialTailnet(ctx, srv, "tcp", netip.AddrPortFrom(ip, port))
	switch {
	case err == nil:
		return c, socks5.Succeeded, nil
	case errors.Is(err, errNotOnTailnet):
		return nil, socks5.NotAllowed, err
	case ctx.Err() != nil:
		return nil, socks5.HostUnreachable, fmt.Errorf("no connection within the forward's wait: %w", err)
	case isConnRefused(err):
		return nil, socks5.ConnectionRefused, err
	}
	return nil, socks5.HostUnreachable, err
}

// isTailnetName reports whether host is a name the tailnet would answer: a single label (a
// MagicDNS short name) or a name under the tailnet's MagicDNS suffix. Any other name is
// outside the tailnet, which a forward never reaches.
func (n *node) isTailnetName(ctx context.Context, host string) bool {
	name := strings.ToLower(strings.TrimSuffix(host, "."))
	if _, err := netip.ParseAddr(strings.Trim(name, "[]")); err == nil {
		return false
	}
	if !strings.Contains(name, ".") || strings.HasSuffix(name, ".ts.net") {
		return true
	}
	_, lc := n.server()
	if lc == nil {
		return false
	}
	st, err := lc.StatusWithoutPeers(ctx)
	if err != nil || st.CurrentTailnet == nil || st.CurrentTailnet.MagicDNSSuffix == "" {
		return false
	}
	return strings.HasSuffix(name, "."+strings.ToLower(strings.TrimSuffix(st.CurrentTailnet.MagicDNSSuffix, ".")))
}

// localSendBuf is SO_SNDBUF on an accepted connection: how much tailnet → client data may wait
// in the kernel for the client to read, as the bridge's hostSendBuf is for a host's
// socketpair (best effort: the kernel caps it at net.core.wmem_max).
const localSendBuf = 1 << 20

func setSendBuf(c net.Conn) {
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			rc.Control(func(fd uintptr) {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, localSendBuf)
			})
		}
	}
}

// forwardConn is one accepted connection and, once dialled, its tailnet connection.
type forwardConn struct {
	local net.Conn

	mu     sync.Mutex
	tn     net.Conn
	ended  bool
	closed sync.Once
}

// setLingerZero makes every close of a loopback TCP connection a reset — also the kernel's
// close when the helper dies, so a killed helper is never an orderly EOF to the client. An
// orderly end undoes it first (closeGently). A Unix socket has no such switch: its peer reads
// ECONNRESET only if data it sent is still unread.
func (fc *forwardConn) setLingerZero() {
	if tc, ok := fc.local.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
}

// attach records the tailnet connection, unless the forward has already reset this one.
func (fc *forwardConn) attach(tn net.Conn) bool {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if fc.ended {
		bridge.Reset(tn)
		return false
	}
	fc.tn = tn
	return true
}

// pump copies both ways with the bridge's copiers. EOF one way is passed on as a half-close;
// an error either way resets both sides. When both directions have ended in order, both are
// closed in order.
func (fc *forwardConn) pump() {
	half := func(dst net.Conn, copyErr error) {
		if copyErr != nil {
			fc.abort()
			return
		}
		if cw, ok := dst.(interface{ CloseWrite() error }); !ok || cw.CloseWrite() != nil {
			fc.abort()
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The local socket is a kernel one (Unix or TCP): read it as the bridge reads its
		// socketpair, into large pooled buffers only while data waits.
		half(fc.tn, bridge.CopyFromLocal(fc.tn, fc.local.(syscall.Conn)))
	}()
	half(fc.local, bridge.Copy(fc.local, fc.tn))
	<-done
	fc.closeGently()
}

// abort resets both sides; it is how every end that is not an orderly one goes.
func (fc *forwardConn) abort() { fc.end(true) }

// closeGently closes both sides in order (after an abort it does nothing).
func (fc *forwardConn) closeGently() { fc.end(false) }

func (fc *forwardConn) end(reset bool) {
	fc.mu.Lock()
	fc.ended = true
	tn := fc.tn
	fc.mu.Unlock()
	fc.closed.Do(func() {
		if tc, ok := fc.local.(*net.TCPConn); ok {
			if reset {
				tc.SetLinger(0)
			} else {
				tc.SetLinger(-1)
			}
		}
		fc.local.Close()
		if tn == nil {
			return
		}
		if reset {
			bridge.Reset(tn)
		} else {
			tn.Close()
		}
	})
}
