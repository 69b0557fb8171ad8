package main

import (
	"math"
	"time"
)

// The node's bounds (docs/protocol.md §9), in one place. The channel's own bounds (frame
// size, fds, requests in flight) are internal/wire's.
const (
	maxListeners   = 256
	defaultBacklog = 128
	maxBacklog     = 4096
	// maxTimeoutMS caps timeout_ms so that it cannot overflow a time.Duration; nothing
	// sensible waits 24 days.
	maxTimeoutMS = math.MaxInt32
	// localCallTimeout bounds the helper's own calls to tsnet's in-process LocalAPI, made
	// for no caller's call: the status taken to explain a timeout, and start's preferences.
	// Every call a host makes that waits is bounded by its own timeout_ms (deadline.go).
	localCallTimeout = 5 * time.Second
)
