package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Debug-only profiles of the whole helper process, for the benchmarks
// (benchmarks/README.md). Files, never a network listener; "%p" in a path is replaced by
// the helper's pid, so that several helpers can share one setting.
//
//   - TSPROC_HELPER_PPROF=<path>: a CPU profile from start to exit (nothing is written if
//     the helper is killed).
//   - TSPROC_HELPER_HEAPPROF=<path>: a heap profile taken when the heap is at its largest:
//     every 100 ms the helper reads its memory statistics, and whenever the heap in use
//     has grown by a tenth since the last profile it writes the profile again (to path) and
//     the statistics (to path.txt).
const (
	pprofEnv    = "TSPROC_HELPER_PPROF"
	heapProfEnv = "TSPROC_HELPER_HEAPPROF"
)

// startProfile starts the profiles asked for in the environment, if any, and returns the
// function that stops them and writes them out.
func startProfile() (stop func()) {
	stopCPU := startCPUProfile(os.Getenv(pprofEnv))
	stopHeap := startHeapWatch(os.Getenv(heapProfEnv))
	return func() {
		stopHeap()
		stopCPU()
	}
}

func profilePath(path string) string {
	return strings.ReplaceAll(path, "%p", strconv.Itoa(os.Getpid()))
}

func startCPUProfile(path string) (stop func()) {
	if path == "" {
		return func() {}
	}
	f, err := os.Create(profilePath(path))
	if err != nil {
		stderrLog.Log("warn", "helper", fmt.Sprintf("%s: %v", pprofEnv, err))
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		stderrLog.Log("warn", "helper", fmt.Sprintf("%s: %v", pprofEnv, err))
		f.Close()
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}

func startHeapWatch(path string) (stop func()) {
	if path == "" {
		return func() {}
	}
	path = profilePath(path)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		var last uint64
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse < last+last/10 {
				continue
			}
			last = ms.HeapInuse
			if err := writeHeapProfile(path, &ms); err != nil {
				stderrLog.Log("warn", "helper", fmt.Sprintf("%s: %v", heapProfEnv, err))
				return
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}

func writeHeapProfile(path string, ms *runtime.MemStats) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	const mb = 1 << 20
	stats := fmt.Sprintf("time %s\nHeapInuse %d MB\nHeapAlloc %d MB\nHeapIdle %d MB\n"+
		"HeapReleased %d MB\nHeapSys %d MB\nStackInuse %d MB\nSys %d MB\nNumGC %d\n"+
		"NextGC %d MB\nGoroutines %d\n",
		time.Now().UTC().Format(time.RFC3339Nano), ms.HeapInuse/mb, ms.HeapAlloc/mb,
		ms.HeapIdle/mb, ms.HeapReleased/mb, ms.HeapSys/mb, ms.StackInuse/mb, ms.Sys/mb,
		ms.NumGC, ms.NextGC/mb, runtime.NumGoroutine())
	return os.WriteFile(path+".txt", []byte(stats), 0o644)
}
