package main

import (
	"os"
	"testing"

	"tailscale.com/envknob"
	"tailscale.com/net/netns"
)

// helperMainEnv makes the test binary behave as tsproc-helper itself (see TestMain), so that
// the subprocess tests exercise both modes end to end without a separate go build.
const helperMainEnv = "TSPROC_HELPER_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(helperMainEnv) == "1" {
		os.Exit(run(os.Args[1:]))
	}
	// Keep tsnet nodes away from everything but the local tailnet: no UPnP/NAT-PMP/PCP probes
	// of the LAN gateway, no LAN addresses as endpoints. The knobs are read at package init,
	// so t.Setenv would come too late; and they are plain variables that closed nodes'
	// goroutines may still read, so they are set once for the whole process, never restored.
	envknob.Setenv("TS_DISABLE_PORTMAPPER", "1")
	envknob.Setenv("TS_DEBUG_OMIT_LOCAL_ADDRS", "1")
	// As in tsnet's own tests (Corp#4520): no socket marks or interface binding.
	netns.SetEnabled(false)
	os.Exit(m.Run())
}
