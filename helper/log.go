package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"regexp"
	"runtime/debug"
	"sync"
	"time"
)

// secretPattern matches auth keys (Tailscale's tskey-… and Headscale's hskey-…) so that no log
// line or error message ever carries one.
var secretPattern = regexp.MustCompile(`\b(tskey|hskey)-[A-Za-z0-9_-]+`)

// redact replaces every auth key in s with a placeholder that keeps its kind.
func redact(s string) string {
	return secretPattern.ReplaceAllString(s, "$1-REDACTED")
}

// jsonLogger writes one JSON object per line: {"time","level","source","msg"}.
// It is safe for concurrent use; a line is never interleaved with another.
type jsonLogger struct {
	mu sync.Mutex
	w  io.Writer
}

var stderrLog = &jsonLogger{w: os.Stderr}

type logLine struct {
	Time   string `json:"time"`
	Level  string `json:"level"`
	Source string `json:"source"`
	Msg    string `json:"msg"`
}

func (l *jsonLogger) log(level, source, msg string) {
	b, err := json.Marshal(logLine{
		Time:   time.Now().UTC().Format(time.RFC3339Nano),
		Level:  level,
		Source: source,
		Msg:    redact(msg),
	})
	if err != nil {
		return
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.w.Write(b)
}

// logf returns a printf-style logger (the shape tsnet's Logf and UserLogf take) that writes
// at level from source.
func (l *jsonLogger) logf(level, source string) func(format string, args ...any) {
	return func(format string, args ...any) {
		l.log(level, source, fmt.Sprintf(format, args...))
	}
}

// helperLogf logs the helper's own messages at info level.
func helperLogf(format string, args ...any) {
	stderrLog.log("info", "helper", fmt.Sprintf(format, args...))
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
