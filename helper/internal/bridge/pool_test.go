package bridge

import (
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tsproc/tsproc/helper/internal/wire/wiretest"
)

// pumpWorkers counts the pool's goroutines, and of them those waiting for a pump.
func pumpWorkers() (all, idle int) {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "bridge.pumpWorker(") {
			all++
			if strings.Contains(g, "[select") {
				idle++
			}
		}
	}
	return all, idle
}

// TestPumpPoolReusesAndRetires: a pump that starts while a pooled goroutine is idle runs on
// it (no new goroutine), and an idle pooled goroutine exits after poolIdle.
func TestPumpPoolReusesAndRetires(t *testing.T) {
	wiretest.WaitFor(t, func() bool { all, _ := pumpWorkers(); return all == 0 }, "no pool goroutine left by earlier tests")
	ran := make(chan int, 2)
	goPump(func() { ran <- 1 })
	<-ran
	wiretest.WaitFor(t, func() bool { all, idle := pumpWorkers(); return all == 1 && idle == 1 }, "one idle pool goroutine")
	goPump(func() { ran <- 2 })
	<-ran
	if n, _ := pumpWorkers(); n != 1 {
		t.Fatalf("%d pool goroutines after a second pump, want the idle one reused", n)
	}
	start := time.Now()
	wiretest.WaitFor(t, func() bool { all, _ := pumpWorkers(); return all == 0 }, "the idle pool goroutine to exit")
	if d := time.Since(start); d < poolIdle/2 {
		t.Fatalf("the idle pool goroutine exited after %v, want about %v", d, poolIdle)
	}
}

// TestPumpPoolKeepsAtMostPoolMaxIdle: a burst of pumps that end together leaves at most
// poolMax goroutines waiting.
func TestPumpPoolKeepsAtMostPoolMaxIdle(t *testing.T) {
	release := make(chan struct{})
	var started sync.WaitGroup
	for range 4 * poolMax {
		started.Add(1)
		goPump(func() { started.Done(); <-release })
	}
	started.Wait()
	close(release)
	wiretest.WaitFor(t, func() bool { all, idle := pumpWorkers(); return all == idle }, "the burst's pumps to end")
	if all, _ := pumpWorkers(); all > poolMax {
		t.Fatalf("%d pool goroutines left waiting, want at most %d", all, poolMax)
	}
	wiretest.WaitFor(t, func() bool { all, _ := pumpWorkers(); return all == 0 }, "the idle pool goroutines to exit")
}
