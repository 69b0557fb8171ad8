package main

import (
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
)

// A debug-only CPU profile of the whole helper process, for the benchmarks
// (benchmarks/README.md): with TSPROC_HELPER_PPROF=<path> in its environment, the helper
// profiles itself from start to exit and writes a pprof CPU profile to path ("%p" in path is
// replaced by its pid, so that several helpers can share one setting). A file, never a
// network listener; nothing is written if the helper is killed.
const pprofEnv = "TSPROC_HELPER_PPROF"

// startProfile starts the CPU profile asked for in the environment, if any, and returns the
// function that writes it out.
func startProfile() (stop func()) {
	path := os.Getenv(pprofEnv)
	if path == "" {
		return func() {}
	}
	path = strings.ReplaceAll(path, "%p", strconv.Itoa(os.Getpid()))
	f, err := os.Create(path)
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
