package main

import (
	"context"
	"io"
	"net"
	"os"

	"github.com/tsproc/tsproc/helper/internal/wire"
)

// bench_echo, a benchmark-only method (benchmarks/README.md, the "helper hop" line): a
// connection like a dialled one, through the same bridge and the same hand-over, whose far
// side is an echo inside the helper instead of a tailnet connection. It times what the
// Python ⇄ helper boundary costs with no tsnet behind it. It exists only when the helper's
// environment has TSPROC_HELPER_BENCH=1; otherwise the method is unknown, as it is to
// every production host.
const benchEnv = "TSPROC_HELPER_BENCH"

var benchEnabled = os.Getenv(benchEnv) == "1"

func (n *node) benchEcho(context.Context, *wire.ParamReader) (*wire.Reply, error) {
	if !benchEnabled {
		return nil, wire.NewError(wire.CodeUnknownMethod, "no method %q", "bench_echo")
	}
	near, far := net.Pipe()
	b, err := n.newConn(near)
	if err != nil {
		far.Close()
		return nil, err
	}
	// The echo ends when the bridge closes near (far then reads an error).
	go func() {
		defer far.Close()
		_, _ = io.Copy(far, far)
	}()
	return &wire.Reply{
		Result: map[string]any{"conn": b.ID(), "local": "pipe:0", "remote": "pipe:0", "fd": true},
		FD:     b.TakePassFD(),
		After:  func(sent bool) { n.startConn(b, sent) },
	}, nil
}
