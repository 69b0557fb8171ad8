// Package jsonlog is the helper's logging: one JSON object per line on stderr,
// {"time","level","source","msg"}, with every auth key redacted. The host forwards these lines
// to Python's logging (docs/protocol.md §10).
package jsonlog

import (
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"sync"
	"time"
)

// SecretPattern matches auth keys (Tailscale's tskey-… and Headscale's hskey-…) so that no log
// line or error message ever carries one.
var SecretPattern = regexp.MustCompile(`\b(tskey|hskey)-[A-Za-z0-9_-]+`)

// tokenPattern matches the other secrets a node is given or keeps: a JSON Web Token (a
// workload identity's ID token: three base64url parts, the first a JSON header, so "eyJ") and a
// private key in its text form (the state's "privkey:…").
var tokenPattern = regexp.MustCompile(`\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*|\bprivkey:[0-9a-f]+`)

// Redact replaces every auth key in s with a placeholder that keeps its kind, and every ID
// token and private key with a placeholder.
func Redact(s string) string {
	s = SecretPattern.ReplaceAllString(s, "$1-REDACTED")
	return tokenPattern.ReplaceAllString(s, "REDACTED")
}

// Logger writes one JSON object per line: {"time","level","source","msg"}.
// It is safe for concurrent use; a line is never interleaved with another.
type Logger struct {
	mu sync.Mutex
	w  io.Writer
}

// New returns a Logger writing to w.
func New(w io.Writer) *Logger { return &Logger{w: w} }

type logLine struct {
	Time   string `json:"time"`
	Level  string `json:"level"`
	Source string `json:"source"`
	Msg    string `json:"msg"`
}

// Log writes msg, redacted, at level from source.
func (l *Logger) Log(level, source, msg string) {
	b, err := json.Marshal(logLine{
		Time:   time.Now().UTC().Format(time.RFC3339Nano),
		Level:  level,
		Source: source,
		Msg:    Redact(msg),
	})
	if err != nil {
		return
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.w.Write(b)
}

// Logf returns a printf-style logger (the shape tsnet's Logf and UserLogf take) that writes
// at level from source.
func (l *Logger) Logf(level, source string) func(format string, args ...any) {
	return func(format string, args ...any) {
		l.Log(level, source, fmt.Sprintf(format, args...))
	}
}

// SetOutput makes l write to w from now on and returns the writer it wrote to before.
func (l *Logger) SetOutput(w io.Writer) (old io.Writer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	old, l.w = l.w, w
	return old
}
