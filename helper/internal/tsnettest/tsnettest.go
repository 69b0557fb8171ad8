// Package tsnettest has tsnet test nodes for the tests of the control mode (package main and
// internal/localtailnet): ephemeral, in memory, closed at test end.
package tsnettest

import (
	"context"
	"net/netip"
	"runtime"
	"slices"
	"testing"
	"time"

	"tailscale.com/ipn/store/mem"
	"tailscale.com/tsnet"
	"tailscale.com/types/logger"
)

// NewNode returns an ephemeral in-memory tsnet node for controlURL, closed at test end. It logs
// (prefixed with its hostname) only under go test -v.
func NewNode(t testing.TB, controlURL, hostname, authKey string) *tsnet.Server {
	t.Helper()
	logf := logger.Discard
	if testing.Verbose() {
		logf = logger.WithPrefix(t.Logf, hostname+": ")
	}
	s := &tsnet.Server{
		Dir:        t.TempDir(),
		ControlURL: controlURL,
		Hostname:   hostname,
		AuthKey:    authKey,
		Ephemeral:  true,
		Store:      new(mem.Store),
		Logf:       logf,
		UserLogf:   logf,
	}
	t.Cleanup(func() { closeWithin(t, s, hostname, closeBound) })
	return s
}

// closeBound is how long a test waits for a node's Close at its end.
const closeBound = 20 * time.Second

// closeWithin closes s, waiting at most d; a Close that does not return fails the test with
// every goroutine's stack. A backstop only: the one hang seen (wireguard-go's closeBindLocked
// waiting for magicsock receive goroutines stranded by a rebind under
// TS_DEBUG_ALWAYS_USE_DERP, docs/reliability.md) is avoided at its cause, and a new one must
// show itself with its stacks instead of holding the test until its timeout. The stuck Close
// is left to end with the test process.
func closeWithin(t testing.TB, s *tsnet.Server, hostname string, d time.Duration) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Close()
	}()
	select {
	case <-done:
	case <-time.After(d):
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		t.Errorf("%s: tsnet.Server.Close did not return within %v; goroutines:\n%s", hostname, d, buf)
	}
}

// UpWithin brings s up, waiting at most d, and returns its first Tailscale IP.
func UpWithin(t testing.TB, s *tsnet.Server, d time.Duration) (netip.Addr, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	st, err := s.Up(ctx)
	if err != nil {
		return netip.Addr{}, err
	}
	return st.TailscaleIPs[0], nil
}

// WaitForPeer waits until s knows peer with a home DERP region, failing t when ctx ends first.
// Up returns once s itself is running; a node that came up just before it may not be in its
// netmap yet, and until it is, a dial to it fails at once ("no route to host"), and until its
// home region is known, the first WireGuard handshake finds no path and is retried only 5 s
// later.
func WaitForPeer(t testing.TB, ctx context.Context, s *tsnet.Server, peer netip.Addr) {
	t.Helper()
	lc, err := s.LocalClient()
	if err != nil {
		t.Fatal(err)
	}
	for {
		st, err := lc.Status(ctx)
		if err != nil {
			t.Fatalf("waiting for peer %v: %v", peer, err)
		}
		for _, ps := range st.Peer {
			if slices.Contains(ps.TailscaleIPs, peer) && ps.Relay != "" {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("peer %v with a home DERP region not in %s's status: %v", peer, s.Hostname, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
