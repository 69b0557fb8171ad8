// Command tsproc-helper embeds a Tailscale node (tsnet) for the tsproc Python library.
//
// It has two modes:
//
//	tsproc-helper [node]   speak the tsproc protocol (docs/protocol.md) on stdin/stdout,
//	                       which the host makes one end of an AF_UNIX socketpair
//	tsproc-helper control  run a local tailnet (control server, DERP relay, STUN) on
//	                       127.0.0.1 and print its control URL as one JSON line
//
// Logs go to stderr as JSON lines in both modes.
//
// The node mode is this package: session.go owns the process and the control channel,
// node.go the node and its resources, methods.go is the method table, and the handlers are
// in files named for what they do (start.go, listen.go, accept.go, dial.go, packet.go,
// info.go …). Below it: the control
// channel (internal/wire), the per-connection bridge (internal/bridge), the OS shims
// (internal/parentwatch, internal/nolisten) and the control mode (internal/localtailnet).
// testhook_*.go are the switches only tests and benchmarks set (TSPROC_HELPER_FAULT, the
// profiles, bench_echo).
package main

import (
	"fmt"
	"os"

	"github.com/tsproc/tsproc/helper/internal/localtailnet"
	"github.com/tsproc/tsproc/helper/internal/parentwatch"
	"github.com/tsproc/tsproc/helper/internal/wire"
)

// helperVersion is reported in the hello handshake.
const helperVersion = "0.1.0"

func main() {
	stopProfile := startProfile() // only with TSPROC_HELPER_PPROF set (testhook_pprof.go)
	code := run(os.Args[1:])
	stopProfile()
	os.Exit(code)
}

func run(args []string) int {
	mode := "node"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		mode, args = args[0], args[1:]
	}
	switch mode {
	case "node":
		return runNode(args)
	case "control":
		return localtailnet.Run(args, stderrLog, parentwatch.Watch)
	case "version":
		fmt.Printf("tsproc-helper %s (tailscale %s, protocol %d)\n", helperVersion, tailscaleVersion(), wire.ProtocolVersion)
		return 0
	default:
		fmt.Fprintf(os.Stderr, "tsproc-helper: unknown mode %q (want node, control or version)\n", mode)
		return 2
	}
}
