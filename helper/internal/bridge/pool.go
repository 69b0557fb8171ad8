package bridge

import (
	"sync/atomic"
	"time"
)

// Host → tailnet pump goroutines come from a pool. That pump's stack grows on its first
// netstack write (gVisor's TCP send path is deep), and a new goroutine starts small, so every
// new connection paid for copying its stack as it grew: runtime.newstack under the host pump
// was ~0.1 ms of a helper's CPU per set-up, ~90 % of all the pumps' stack growth (profiles in
// benchmarks/README.md). A goroutine whose pump has ended waits poolIdle for the next one and
// keeps its grown stack meanwhile (the GC halves the stack of a parked goroutine that uses
// little of it, once per cycle, so it stays larger than a new one's across a few
// collections). After poolIdle with nothing to run it exits: a helper whose connections have
// ended holds no pump goroutine a moment later.
//
// The tailnet → host pump is not pooled: it lives as long as its connection, parked in
// gonet's Read, and on a pooled goroutine it would hold a grown stack for all that time
// (+7 MB per 1,000 idle connections when both pumps were pooled), to save little (its stack
// grows less).
const poolIdle = time.Second

// poolMax bounds the idle pooled goroutines. Set-ups one after another need one or two; a
// burst of connections that all go idle together (a thousand opened at once) would otherwise
// keep a thousand grown stacks for poolIdle, and the heap they leave behind (+2 MB per 1,000
// idle connections, measured) after it.
const poolMax = 16

var poolIdleNow atomic.Int32 // idle pooled goroutines

// pumpWork hands a pump to an idle pooled goroutine; unbuffered, so a send succeeds only
// when one is waiting.
var pumpWork = make(chan func())

// goPump runs f in a pooled goroutine, or a new one when none is idle.
func goPump(f func()) {
	select {
	case pumpWork <- f:
	default:
		go pumpWorker(f)
	}
}

func pumpWorker(f func()) {
	var t *time.Timer
	for {
		f()
		if poolIdleNow.Add(1) > poolMax {
			poolIdleNow.Add(-1)
			return
		}
		if t == nil {
			t = time.NewTimer(poolIdle)
		} else {
			t.Reset(poolIdle)
		}
		select {
		case f = <-pumpWork:
			poolIdleNow.Add(-1)
		case <-t.C:
			poolIdleNow.Add(-1)
			return
		}
	}
}
