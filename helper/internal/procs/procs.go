// Package procs adapts the helper's GOMAXPROCS to what its connections carry (issue 26).
//
// A round trip through the helper is a chain of hand-offs between goroutines (netpoll, pump,
// netstack, WireGuard's goroutines, the UDP send); with more than one P, each hand-off may
// wake another thread, and the scheduler's park/wake was 27 % of a helper's round-trip CPU.
// With one P the hand-offs stay on one thread: GOMAXPROCS=1 measured 0.77 × the round trip
// and 0.75 × its CPU, but 0.83-0.90 × the bulk rate, because bulk runs WireGuard's crypto and
// netstack in parallel (benchmarks/README.md). So the helper runs on one P while its
// connections carry little, and on the runtime's default while the pumps' byte counters show
// bulk or one P is busy all the time.
//
// It samples only while connections exist (and for a second after the last one ends), so an
// idle helper does not wake up for it; with no connection the runtime's default is restored.
// A user who sets GOMAXPROCS in the helper's environment gets exactly that and no adapting.
package procs

import (
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// Source is what the pumps report (bridge.Activity and bridge.Woken).
type Source struct {
	// Activity returns the live connections and, since the start, the bytes moved and the
	// reads that filled a large buffer (data queued faster than a pump moved it).
	Activity func() (live int64, moved, full uint64)
	// Woken receives a token when a connection starts while none was live.
	Woken <-chan struct{}
}

// The policy, per sample of period. Up at once on bulk or a saturated P, down only after
// downAfter quiet samples in a row, so a transfer that pauses for a moment keeps its Ps
// and a change (a stop-the-world each) stays rare. Bulk is either rate (upBytes) or a pump
// read that filled its large buffer: on a machine so busy that one P moves less than upBytes,
// the queue still shows that the helper is what holds the transfer back.
const (
	period = 100 * time.Millisecond
	// upBytes per sample (10 MiB/s) is bulk; 5,000 64-byte round trips a second move 0.6 MiB/s
	// through each helper.
	upBytes   = 1 << 20
	downBytes = 256 << 10
	// upCPU: the process used most of a core in the sample (on one P, it is saturated).
	upCPU     = period * 85 / 100
	downCPU   = period * 60 / 100
	downAfter = 5
	// lingerSamples with no live connection end the sampling.
	lingerSamples = 10
)

// Decision is the policy without a clock, for tests: the state between samples.
type Decision struct {
	One   bool // running on one P
	quiet int  // samples in a row below the down thresholds
}

// Next takes one sample's bytes, full reads and CPU time and reports whether the state
// changed.
func (d *Decision) Next(bytes, full uint64, cpu time.Duration) bool {
	switch {
	case bytes >= upBytes || full > 0 || cpu >= upCPU:
		d.quiet = 0
		if d.One {
			d.One = false
			return true
		}
	case bytes < downBytes && cpu < downCPU:
		d.quiet++
		if !d.One && d.quiet >= downAfter {
			d.One = true
			return true
		}
	default:
		d.quiet = 0
	}
	return false
}

// Enabled reports whether adapting is allowed: not when the user set GOMAXPROCS, nor on a
// machine where the default is one P anyway.
func Enabled() bool {
	_, set := os.LookupEnv("GOMAXPROCS")
	return !set && runtime.GOMAXPROCS(0) > 1
}

// Adapt runs for the life of the process (start it in a goroutine, after checking Enabled).
// logf reports each change.
func Adapt(src Source, logf func(format string, args ...any)) {
	for range src.Woken {
		watch(src, logf)
	}
}

// watch samples while connections exist and leaves the default in place when they are gone.
func watch(src Source, logf func(format string, args ...any)) {
	var d Decision
	_, lastMoved, lastFull := src.Activity()
	lastCPU := processCPU()
	t := time.NewTicker(period)
	defer t.Stop()
	for idle := 0; idle < lingerSamples; {
		<-t.C
		live, moved, full := src.Activity()
		cpu := processCPU()
		if d.Next(moved-lastMoved, full-lastFull, cpu-lastCPU) {
			set(d.One, logf)
		}
		lastMoved, lastFull, lastCPU = moved, full, cpu
		if live > 0 {
			idle = 0
		} else {
			idle++
		}
	}
	if d.One {
		set(false, logf)
	}
}

func set(one bool, logf func(format string, args ...any)) {
	if one {
		runtime.GOMAXPROCS(1)
	} else {
		// The default, and the runtime's own updates of it (a changed CPU limit) resume.
		runtime.SetDefaultGOMAXPROCS()
	}
	logf("GOMAXPROCS %d", runtime.GOMAXPROCS(0))
}

// processCPU is the process's user and system CPU time so far.
func processCPU() time.Duration {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
