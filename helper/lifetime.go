package main

import (
	"os"
	"time"
)

// The helper must not outlive the host (docs/protocol.md §11). EOF on the control channel is
// the main signal; watchParent is the second one, for a host that died while something else
// still holds its end of the channel.
//
// It deliberately does not use PR_SET_PDEATHSIG: that signal fires when the *thread* that
// forked the helper exits, not the process, and trio starts processes from a worker thread
// that exits after ten idle seconds, so the helper would be killed under a live host.

// parentPollInterval is how often pollParent checks its parent.
const parentPollInterval = 500 * time.Millisecond

// pollParent calls gone once the parent is no longer ppid (the helper was re-parented
// because its parent exited). It runs for the rest of the process.
func pollParent(ppid int, gone func(reason string)) {
	go func() {
		t := time.NewTicker(parentPollInterval)
		defer t.Stop()
		for range t.C {
			if os.Getppid() != ppid {
				gone("parent process exited")
				return
			}
		}
	}()
}
