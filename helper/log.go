package main

import (
	"fmt"
	"os"
	"runtime/debug"

	"github.com/tsproc/tsproc/helper/internal/bridge"
	"github.com/tsproc/tsproc/helper/internal/jsonlog"
)

// stderrLog is the helper's log: JSON lines on stderr, which the host forwards.
var stderrLog = jsonlog.New(os.Stderr)

func init() { bridge.Logf = helperLogf }

// helperLogf logs the helper's own messages at info level.
func helperLogf(format string, args ...any) {
	stderrLog.Log("info", "helper", fmt.Sprintf(format, args...))
}

// tailscaleVersion is the version of the tailscale.com module this binary was built with.
func tailscaleVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range bi.Deps {
			if dep.Path == "tailscale.com" {
				if dep.Replace != nil {
					return dep.Replace.Version
				}
				return dep.Version[1:] // strip the leading "v"
			}
		}
	}
	return "unknown"
}

// debugLogf logs the helper's own messages at debug level.
func debugLogf(format string, args ...any) {
	stderrLog.Log("debug", "helper", fmt.Sprintf(format, args...))
}
