// Package tsnettest has tsnet test nodes for the tests of the control mode (package main and
// internal/localtailnet): ephemeral, in memory, closed at test end.
package tsnettest

import (
	"context"
	"net/netip"
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
	t.Cleanup(func() { s.Close() })
	return s
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
