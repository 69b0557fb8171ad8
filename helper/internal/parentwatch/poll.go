package parentwatch

import (
	"os"
	"time"
)

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
