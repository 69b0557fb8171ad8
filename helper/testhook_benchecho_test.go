package main

import (
	"errors"
	"io"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tsproc/tsproc/helper/internal/fdtest"
	"github.com/tsproc/tsproc/helper/internal/wire"
)

// discardSender accepts every message and closes its fd.
type discardSender struct{}

func (discardSender) Send(m *wire.Message) error {
	if m.FD >= 0 {
		unix.Close(m.FD)
	}
	return nil
}

// TestBenchEcho checks the benchmark-only method: unknown without TSPROC_HELPER_BENCH=1,
// and with it a bridged connection whose far side echoes.
func TestBenchEcho(t *testing.T) {
	n := newNode(discardSender{}, false)
	defer n.close()
	benchEnabled = false
	var rerr *wire.Error
	if _, err := n.benchEcho(t.Context(), nil); !errors.As(err, &rerr) || rerr.Code != wire.CodeUnknownMethod {
		t.Fatalf("without %s: %v", benchEnv, err)
	}
	benchEnabled = true
	defer func() { benchEnabled = false }()
	rep, err := n.benchEcho(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	host := fdtest.FDConn(t, rep.FD)
	rep.After(true)
	if _, err := host.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(host, got); err != nil || string(got) != "ping" {
		t.Fatalf("echo: %q, %v", got, err)
	}
	host.Close()
}
