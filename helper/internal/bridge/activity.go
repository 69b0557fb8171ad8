package bridge

import "sync/atomic"

// What the pumps do, for the helper's runtime settings (internal/procs): how many bytes they
// have moved in all, how many of their reads filled a large buffer (data was queued faster
// than the pump moved it: bulk, at whatever rate the machine allows), and how many
// connections are being pumped. Every pump write goes through writeAll, which counts it; a
// bridge counts as live from Start until both its pumps have ended, a forward's copy while it
// runs.
var (
	moved     atomic.Uint64
	fullReads atomic.Uint64
	live      atomic.Int64
	// woken gets a token when live goes from zero to one, so that a watcher can sleep while the
	// helper pumps nothing and wake up for the first connection.
	woken = make(chan struct{}, 1)
)

// Activity reports the number of live connections, and since the process started the bytes
// the pumps have moved (both directions, all connections) and their reads that filled a large
// buffer.
func Activity() (liveConns int64, movedBytes, full uint64) {
	return live.Load(), moved.Load(), fullReads.Load()
}

// Woken receives a token when a connection starts while none was live.
func Woken() <-chan struct{} { return woken }

func pumpsStarted() {
	if live.Add(1) == 1 {
		select {
		case woken <- struct{}{}:
		default:
		}
	}
}

func pumpsEnded() { live.Add(-1) }
