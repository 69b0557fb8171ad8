package procs

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

func TestDecisionGoesDownSlowlyAndUpAtOnce(t *testing.T) {
	var d Decision
	for i := 1; i < downAfter; i++ {
		if d.Next(64, 0, time.Millisecond) || d.One {
			t.Fatalf("one P after %d quiet samples, want %d", i, downAfter)
		}
	}
	if !d.Next(64, 0, time.Millisecond) || !d.One {
		t.Fatalf("still all Ps after %d quiet samples", downAfter)
	}
	if !d.Next(upBytes, 0, 0) || d.One {
		t.Fatal("bulk did not restore the Ps at once")
	}
	for range downAfter {
		d.Next(0, 0, 0)
	}
	if !d.One {
		t.Fatal("not one P after quiet samples")
	}
	if !d.Next(0, 0, upCPU) || d.One {
		t.Fatal("a saturated P did not restore the Ps")
	}
	for range downAfter {
		d.Next(0, 0, 0)
	}
	if !d.Next(64<<10, 1, 0) || d.One {
		t.Fatal("a full read (a queue, at a low rate) did not restore the Ps")
	}
}

func TestDecisionInBetweenHoldsTheState(t *testing.T) {
	var d Decision
	for range 3 * downAfter {
		d.Next(512<<10, 0, 0) // between the thresholds: neither bulk nor quiet
	}
	if d.One {
		t.Fatal("one P while 512 KiB per sample flows")
	}
	for range downAfter - 1 {
		d.Next(0, 0, 0)
	}
	d.Next(512<<10, 0, 0) // a burst resets the count
	if d.Next(0, 0, 0) || d.One {
		t.Fatal("the quiet count was not reset by a burst")
	}
}

func TestWatchRestoresTheDefaultWhenConnectionsEnd(t *testing.T) {
	if !Enabled() {
		t.Skip("GOMAXPROCS is set or the machine has one CPU")
	}
	def := runtime.GOMAXPROCS(0)
	var live atomic.Int64
	live.Store(1)
	src := Source{Activity: func() (int64, uint64, uint64) { return live.Load(), 0, 0 }}
	done := make(chan struct{})
	go func() { watch(src, func(string, ...any) {}); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.GOMAXPROCS(0) != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if runtime.GOMAXPROCS(0) != 1 {
		t.Fatal("an idle connection did not bring GOMAXPROCS to 1")
	}
	live.Store(0)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("watch did not end after the last connection")
	}
	if n := runtime.GOMAXPROCS(0); n != def {
		t.Fatalf("GOMAXPROCS %d after the connections ended, want the default %d", n, def)
	}
}
