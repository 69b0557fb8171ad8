package main

import (
	"context"
	"maps"
	"net"
	"slices"
	"sync"

	"tailscale.com/client/local"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tsnet"

	"github.com/tsproc/tsproc/helper/internal/bridge"
	"github.com/tsproc/tsproc/helper/internal/connrecord"
	"github.com/tsproc/tsproc/helper/internal/statestore"
	"github.com/tsproc/tsproc/helper/internal/wire"
)

// One tsnet.Server driven by the host (docs/protocol.md), and everything the host made with it:
// listeners, bridged connections, UDP relays. The method table is methods.go, and each handler
// is in the file named for what it does.

// node is the tsnet server and everything the host made with it.
type node struct {
	out       wire.Sender       // notifications to the host
	host      statestore.Caller // requests to the host (the dispatcher), for a host state store
	tsnetLogs bool
	// record holds the tuples of connections netstack took on and the host has not been
	// handed yet (internal/connrecord); nil without one.
	record *connrecord.Record

	// startMu is held across tsnet's Start and by close, because tsnet.Server.Close must
	// not run before or concurrently with Start.
	startMu sync.Mutex

	mu           sync.Mutex
	closed       bool
	srv          *tsnet.Server // nil until start succeeds
	lc           *local.Client
	watchCancel  context.CancelFunc
	listeners    map[uint64]*tsListener
	conns        map[uint64]*bridge.Bridge
	packets      map[uint64]*packetRelay
	resolver     tailnetResolver
	paths        peerPaths    // peerpath.go
	forwards     forwardTable // forward.go
	nextListener uint64
	nextConn     uint64
	state        string // last backend state from the IPN bus: may lag the backend's (dialableServer)
	authURL      string // last auth URL from the IPN bus, until Running
	lastErr      string // last ErrMessage from the IPN bus, until Running
	// releaseCodePages: start's release_code_pages, done by afterUp (memory.go).
	releaseCodePages bool
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
		conns:      make(map[uint64]*bridge.Bridge),
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
func (n *node) newConn(c net.Conn) (*bridge.Bridge, error) {
	n.mu.Lock()
	n.nextConn++
	id := n.nextConn
	closed := n.closed
	n.mu.Unlock()
	if closed {
		bridge.Reset(c)
		return nil, wire.NewError(wire.CodeInternal, "helper is shutting down")
	}
	b, err := bridge.New(id, c, n.connEnded)
	if err != nil {
		bridge.Reset(c)
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		b.Abort()
		b.ClosePassFD()
		return nil, wire.NewError(wire.CodeInternal, "helper is shutting down")
	}
	n.conns[id] = b
	return b, nil
}

// startConn starts pumping once the host has the bridge's fd, or drops the bridge if it
// never got it.
func (n *node) startConn(b *bridge.Bridge, handedOver bool) {
	n.mu.Lock()
	if !handedOver || n.closed {
		delete(n.conns, b.ID())
		n.mu.Unlock()
		b.Abort()
		return
	}
	n.connWG.Add(1)
	n.mu.Unlock()
	b.Start(func() {
		n.mu.Lock()
		delete(n.conns, b.ID())
		n.mu.Unlock()
		n.connWG.Done()
	})
}

// connEnded sends conn_end. The bridge calls it before the host's end can read EOF.
func (n *node) connEnded(id uint64, clean bool, err error) {
	params := map[string]any{"conn": id, "clean": clean}
	if err != nil {
		params["error"] = bridge.EndError(err)
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
	listeners := takeAll(n.listeners)
	conns := slices.Collect(maps.Values(n.conns)) // each leaves n.conns as it ends
	packets := takeAll(n.packets)
	n.mu.Unlock()

	for _, l := range listeners {
		l.close()
	}
	n.forwards.closeAll()
	for _, b := range conns {
		b.Abort()
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
