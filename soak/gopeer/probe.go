package main

import (
	"context"
	"io"
	"strconv"
	"strings"
	"time"

	"tailscale.com/tsnet"
)

// Test commands, read from stdin before "go" (tests/test_dial_timewait.py and
// tests/test_peer_reset.py use them; the soak does not):
//
//	probe ADDR N   dial ADDR N times in sequence: send 1 byte, read 1 byte and the server's
//	               EOF, close, each
//	               connection bounded by probeBound. Emits {"ev":"probe","n":N,"stalls":S,
//	               "slowest_ms":M,"errors":[...]} when done.
//	hold ADDR      dial ADDR, send 1 byte, read its 1-byte echo, emit {"ev":"held"}, then read
//	               until the connection fails or ends, with no deadline at all (the
//	               connection's end is all the test waits for). Emits {"ev":"hold_end",
//	               "error":E} then.
//	wait ADDR      dial ADDR and read until the connection fails or ends, with no deadline,
//	               sending nothing (for a server that never accepts it). Emits
//	               {"ev":"waiting","local":L} once connected, {"ev":"wait_end","local":L,
//	               "error":E} at its end.
//
// ADDR is a tailnet IP and port (IPv6 in brackets).

// probeBound bounds each probe connection: a dial, a 1-byte echo and a close take ~2 ms on
// the local tailnet, so a connection that needs this long has stalled.
const probeBound = 5 * time.Second

// command runs one test command line and reports whether it was one.
func command(srv *tsnet.Server, line string) bool {
	f := strings.Fields(line)
	switch {
	case len(f) == 3 && f[0] == "probe":
		n, err := strconv.Atoi(f[2])
		if err != nil {
			fatal("probe: count %q: %v", f[2], err)
		}
		probe(srv, f[1], n)
		return true
	case len(f) == 2 && f[0] == "hold":
		go hold(srv, f[1])
		return true
	case len(f) == 2 && f[0] == "wait":
		wait(srv, f[1]) // connected before the next command is read
		return true
	}
	return false
}

func probe(srv *tsnet.Server, addr string, n int) {
	stalls := 0
	var slowest time.Duration
	errs := []string{}
	for i := range n {
		start := time.Now()
		if err := echoOnce(srv, addr); err != nil {
			stalls++
			if len(errs) < 10 {
				errs = append(errs, "connection "+strconv.Itoa(i)+": "+err.Error())
			}
		}
		slowest = max(slowest, time.Since(start))
	}
	emit(map[string]any{"ev": "probe", "n": n, "stalls": stalls,
		"slowest_ms": slowest.Milliseconds(), "errors": errs})
}

// echoOnce is one probe connection; any error is a stall (the server answers every byte).
func echoOnce(srv *tsnet.Server, addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), probeBound)
	defer cancel()
	c, err := srv.Dial(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	c.SetDeadline(deadline)
	if _, err := c.Write([]byte{'p'}); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		return err
	}
	// Then the server's FIN, so that it is the server that closed first (and holds the
	// TIME_WAIT), every time.
	_, err = io.Copy(io.Discard, c)
	return err
}

func hold(srv *tsnet.Server, addr string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	c, err := srv.Dial(ctx, "tcp", addr)
	cancel()
	if err != nil {
		emit(map[string]any{"ev": "hold_end", "error": "dial: " + err.Error()})
		return
	}
	defer c.Close()
	if _, err := c.Write([]byte{'h'}); err != nil {
		emit(map[string]any{"ev": "hold_end", "error": "write: " + err.Error()})
		return
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		emit(map[string]any{"ev": "hold_end", "error": "echo: " + err.Error()})
		return
	}
	emit(map[string]any{"ev": "held", "local": c.LocalAddr().String()})
	_, err = io.Copy(io.Discard, c)
	if err == nil {
		err = io.EOF
	}
	emit(map[string]any{"ev": "hold_end", "error": err.Error()})
}

func wait(srv *tsnet.Server, addr string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	c, err := srv.Dial(ctx, "tcp", addr)
	cancel()
	if err != nil {
		emit(map[string]any{"ev": "wait_end", "local": "", "error": "dial: " + err.Error()})
		return
	}
	local := c.LocalAddr().String()
	emit(map[string]any{"ev": "waiting", "local": local})
	go func() {
		defer c.Close()
		_, err := io.Copy(io.Discard, c)
		if err == nil {
			err = io.EOF
		}
		emit(map[string]any{"ev": "wait_end", "local": local, "error": err.Error()})
	}()
}
