package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"tailscale.com/client/local"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tsnet"

	"github.com/tsproc/tsproc/helper/internal/statestore"
	"github.com/tsproc/tsproc/helper/internal/wire"
)

// node mode: one tsnet.Server driven by the host over the control channel on fds 0 and 1
// (docs/protocol.md). This file owns the process lifetime and the node's resources; the
// method handlers are in methods.go, start.go and connect.go.

const (
	// hostGoneGrace bounds the cleanup after the host went away (EOF, protocol error, parent
	// exit): docs/protocol.md §11 promises an exit within one second.
	hostGoneGrace = 800 * time.Millisecond
	// shutdownGrace bounds the cleanup after shutdown or a signal. It leaves room for tsnet
	// to log an ephemeral node out, which it tries for up to five seconds.
	shutdownGrace = 6 * time.Second
)

func runNode(args []string) int {
	fs := flag.NewFlagSet("node", flag.ContinueOnError)
	tsnetLogs := fs.Bool("tsnet-logs", true, "write tsnet's verbose backend log to stderr (level debug, source tsnet)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: tsproc-helper node [flags]\n\n"+
			"Speaks the tsproc protocol on fds 0 and 1, which must be one end of an AF_UNIX\n"+
			"socketpair. It is started by the tsproc Python library, not by hand.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2 // fs.Parse has printed the error and the usage
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return 2
	}

	flt, err := parseFault(os.Getenv(faultEnv))
	if err != nil {
		stderrLog.Log("error", "helper", err.Error())
		return 2
	}
	if flt.kind == faultExitAtStart {
		stderrLog.Log("error", "helper", "fault: exit_at_start")
		return 3
	}
	// No kernel listener, ever: the only way into the node is the tailnet (nolisten_linux.go).
	if err := forbidListen(); errors.Is(err, errors.ErrUnsupported) {
		helperLogf("host listeners are not forbidden here: %v", err)
	} else if err != nil {
		stderrLog.Log("warn", "helper", fmt.Sprintf("cannot forbid host listeners: %v", err))
	}

	parentGone := make(chan string, 1)
	watchParent(func(reason string) {
		select {
		case parentGone <- reason:
		default:
		}
	})

	rd, wr, err := stdioChannel()
	if err != nil {
		stderrLog.Log("error", "helper", fmt.Sprintf("control channel: %v", err))
		return 1
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)

	sess := newSession(rd, wr, flt, *tsnetLogs)
	served := make(chan error, 1)
	go func() { served <- sess.serve() }()
	helperLogf("tsproc-helper %s (tailscale %s, protocol %d) serving, pid %d",
		helperVersion, tailscaleVersion(), wire.ProtocolVersion, os.Getpid())

	select {
	case err := <-served:
		if err != nil {
			stderrLog.Log("error", "helper", fmt.Sprintf("control channel: %v; exiting", err))
			sess.closeWithin(hostGoneGrace)
			return 1
		}
		helperLogf("control channel closed by the host; exiting")
		sess.closeWithin(hostGoneGrace)
		return 0
	case reason := <-parentGone:
		stderrLog.Log("warn", "helper", reason+"; exiting")
		sess.closeWithin(hostGoneGrace)
		return 1
	case sig := <-sigs:
		helperLogf("received %v; shutting down", sig)
		sess.closeWithin(shutdownGrace)
		return 0
	case <-sess.node.shutdownRequested():
		helperLogf("shutdown requested; shutting down")
		sess.closeWithin(shutdownGrace)
		return 0
	}
}

// stdioChannel returns the control channel: fd 0 for reading and fd 1 for writing (the host
// makes both the same socket). Fds 0 and 1 are then pointed at /dev/null and
// stderr, so that nothing else in the process — a stray print in a dependency — can write
// into the protocol stream, and so that closing the returned conns really closes the channel.
func stdioChannel() (rd, wr *net.UnixConn, err error) {
	rd, err = unixConnFromFile(os.Stdin)
	if err != nil {
		return nil, nil, fmt.Errorf("fd 0: %w", err)
	}
	wr, err = unixConnFromFile(os.Stdout)
	if err != nil {
		rd.Close()
		return nil, nil, fmt.Errorf("fd 1: %w", err)
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, nil, err
	}
	defer devnull.Close()
	if err := unix.Dup2(int(devnull.Fd()), 0); err != nil {
		return nil, nil, fmt.Errorf("detaching fd 0: %w", err)
	}
	if err := unix.Dup2(2, 1); err != nil {
		return nil, nil, fmt.Errorf("detaching fd 1: %w", err)
	}
	return rd, wr, nil
}

// unixConnFromFile returns a UnixConn on a duplicate of f's fd.
func unixConnFromFile(f *os.File) (*net.UnixConn, error) {
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("not a socket: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("not an AF_UNIX socket but %T", c)
	}
	return uc, nil
}

// session is one control channel with its node: the unit runNode runs and the tests drive.
type session struct {
	rd, wr     *net.UnixConn
	r          wire.Source
	node       *node
	disp       *wire.Dispatcher
	closeFault func() // ends a hung fault reader
}

// newSession serves the protocol reading from rd and writing to wr, which may be the same
// connection. It takes ownership of both. A fault other than faultNone wraps the channel
// (fault.go).
func newSession(rd, wr *net.UnixConn, f fault, tsnetLogs bool) *session {
	r, w, closeFault := withFault(f, wire.NewMsgReader(rd), wire.NewMsgWriter(wr), wr)
	n := newNode(w, tsnetLogs)
	disp := wire.NewDispatcher(n, w, dispatcherConfig())
	n.host = disp
	return &session{
		rd:         rd,
		wr:         wr,
		r:          r,
		node:       n,
		disp:       disp,
		closeFault: closeFault,
	}
}

// dispatcherConfig is what this helper says about itself in hello.
func dispatcherConfig() wire.Config {
	return wire.Config{HelperVersion: helperVersion, TailscaleVersion: tailscaleVersion(), Logf: helperLogf}
}

// serve reads the channel until the host closes it (nil) or breaks the protocol.
func (s *session) serve() error { return s.disp.Serve(s.r) }

// close ends everything: request handlers, listeners, connections, the tsnet server and the
// channel.
func (s *session) close() {
	s.disp.Cancel() // unblocks handlers waiting on tsnet (up, dial) first
	s.closeFault()
	s.node.close()
	// Closing the channel before waiting for the handlers unblocks any that is writing to
	// a host that no longer reads.
	s.rd.Close()
	s.wr.Close()
	s.disp.Close()
}

// closeWithin is close bounded by d: the process exits right after, so whatever has not
// finished by then is cut short by the exit.
func (s *session) closeWithin(d time.Duration) {
	done := make(chan struct{})
	go func() {
		s.close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(d):
		stderrLog.Log("warn", "helper", fmt.Sprintf("cleanup did not finish within %v; exiting anyway", d))
	}
}

// node is the tsnet server and everything the host made with it.
type node struct {
	out       wire.Sender       // notifications to the host
	host      statestore.Caller // requests to the host (the dispatcher), for a host state store
	tsnetLogs bool

	// startMu is held across tsnet's Start and by close, because tsnet.Server.Close must
	// not run before or concurrently with Start.
	startMu sync.Mutex

	mu           sync.Mutex
	closed       bool
	srv          *tsnet.Server // nil until start succeeds
	lc           *local.Client
	watchCancel  context.CancelFunc
	listeners    map[uint64]*tsListener
	conns        map[uint64]*bridge
	packets      map[uint64]*packetRelay
	resolver     tailnetResolver
	nextListener uint64
	nextConn     uint64
	state        string // last backend state from the IPN bus
	authURL      string // last auth URL from the IPN bus, until Running
	lastErr      string // last ErrMessage from the IPN bus, until Running
	// localNoACME: the node is on a loopback control server that gave it no ACME server
	// (start's acme_directory_url), so a certificate request would go to Let's Encrypt.
	localNoACME bool
	withAuthKey bool     // start had an auth key: a refused login is about that key
	healthTexts []string // last health warnings from the IPN bus (non-nil once seen)

	captures captures   // running packet captures (capture.go)
	services serviceSet // Tailscale Services this node hosts (service.go)

	wg     sync.WaitGroup // the IPN bus watcher and the listener pumps
	connWG sync.WaitGroup // running bridges

	shutdownOnce sync.Once
	shutdownCh   chan struct{}
}

func newNode(out wire.Sender, tsnetLogs bool) *node {
	return &node{
		out:        out,
		tsnetLogs:  tsnetLogs,
		listeners:  make(map[uint64]*tsListener),
		conns:      make(map[uint64]*bridge),
		packets:    make(map[uint64]*packetRelay),
		shutdownCh: make(chan struct{}),
	}
}

// shutdownRequested is closed once a shutdown request has been answered.
func (n *node) shutdownRequested() <-chan struct{} { return n.shutdownCh }

func (n *node) requestShutdown() { n.shutdownOnce.Do(func() { close(n.shutdownCh) }) }

// server returns the started tsnet server and its local client, or nil.
func (n *node) server() (*tsnet.Server, *local.Client) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.srv, n.lc
}

// requireStarted returns the started tsnet server and its local client, or not_started
// before start. The methods that talk to tsnet's LocalAPI (up, status, whois, logout,
// cert_domains) use it.
func (n *node) requireStarted() (*tsnet.Server, *local.Client, error) {
	srv, lc := n.server()
	if srv == nil {
		return nil, nil, wire.NewError(wire.CodeNotStarted, "call start first")
	}
	return srv, lc, nil
}

// requireRunning is requireStarted for the methods that need the tailnet itself (listen,
// dial, ping_peer, the UDP ones): before start they answer not_running, the code that the
// same methods give later when the node is started but not (yet) Running. Whether the
// backend is Running is each method's own check, because tsnet's Dial waits for it.
func (n *node) requireRunning() (*tsnet.Server, *local.Client, error) {
	srv, lc := n.server()
	if srv == nil {
		return nil, nil, wire.NewError(wire.CodeNotRunning, "call start and up first")
	}
	return srv, lc, nil
}

// startedStatus returns the started server, its local client and its status without peers,
// or not_running before start.
func (n *node) startedStatus(ctx context.Context) (*tsnet.Server, *local.Client, *ipnstate.Status, error) {
	srv, lc, err := n.requireRunning()
	if err != nil {
		return nil, nil, nil, err
	}
	st, err := lc.StatusWithoutPeers(ctx)
	if err != nil {
		return nil, nil, nil, wire.NewError(wire.CodeInternal, "status: %v", err)
	}
	return srv, lc, st, nil
}

// goOwned runs f in a goroutine that close waits for, unless the node is already closed.
func (n *node) goOwned(f func()) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return false
	}
	n.wg.Go(f)
	return true
}

// newConn makes the bridge for a tailnet connection and registers it. It owns c: on error
// c is reset.
func (n *node) newConn(c net.Conn) (*bridge, error) {
	n.mu.Lock()
	n.nextConn++
	id := n.nextConn
	closed := n.closed
	n.mu.Unlock()
	if closed {
		resetConn(c)
		return nil, wire.NewError(wire.CodeInternal, "helper is shutting down")
	}
	b, err := newBridge(id, c, n.connEnded)
	if err != nil {
		resetConn(c)
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		b.abort()
		b.closePassFD()
		return nil, wire.NewError(wire.CodeInternal, "helper is shutting down")
	}
	n.conns[id] = b
	return b, nil
}

// startConn starts pumping once the host has the bridge's fd, or drops the bridge if it
// never got it.
func (n *node) startConn(b *bridge, handedOver bool) {
	n.mu.Lock()
	if !handedOver || n.closed {
		delete(n.conns, b.id)
		n.mu.Unlock()
		b.abort()
		return
	}
	n.connWG.Add(1)
	n.mu.Unlock()
	b.start(func() {
		n.mu.Lock()
		delete(n.conns, b.id)
		n.mu.Unlock()
		n.connWG.Done()
	})
}

// connEnded sends conn_end. The bridge calls it before the host's end can read EOF.
func (n *node) connEnded(id uint64, clean bool, err error) {
	params := map[string]any{"conn": id, "clean": clean}
	if err != nil {
		params["error"] = endError(err)
	}
	if err := wire.Notify(n.out, "conn_end", params, -1); err != nil {
		helperLogf("conn %d: sending conn_end: %v", id, err)
	}
}

// close closes every listener and connection and the tsnet server (an ephemeral node logs
// out), and waits for every goroutine the node owns. It is idempotent.
func (n *node) close() {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		n.wg.Wait()
		n.connWG.Wait()
		return
	}
	n.closed = true
	n.captures.stopAll()
	listeners := make([]*tsListener, 0, len(n.listeners))
	for _, l := range n.listeners {
		listeners = append(listeners, l)
	}
	clear(n.listeners)
	conns := make([]*bridge, 0, len(n.conns))
	for _, b := range n.conns {
		conns = append(conns, b)
	}
	packets := make([]*packetRelay, 0, len(n.packets))
	for _, r := range n.packets {
		packets = append(packets, r)
	}
	clear(n.packets)
	n.mu.Unlock()

	for _, l := range listeners {
		l.close()
	}
	for _, b := range conns {
		b.abort()
	}
	for _, r := range packets {
		r.close()
	}

	n.startMu.Lock()
	n.mu.Lock()
	srv, cancel := n.srv, n.watchCancel
	n.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	if srv != nil {
		if err := srv.Close(); err != nil {
			helperLogf("closing tsnet: %v", err)
		}
	}
	n.startMu.Unlock()

	n.wg.Wait()
	n.connWG.Wait()
}
