package main

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Test doubles for the host side of the control channel.

// unixPair returns the two ends of an AF_UNIX stream socketpair, closed at test end.
func unixPair(t testing.TB) (a, b *net.UnixConn) {
	t.Helper()
	fds, err := socketpair()
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	a, b = fdConn(t, fds[0]), fdConn(t, fds[1])
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// fdConn turns fd (an AF_UNIX stream socket) into a UnixConn, taking ownership of fd.
func fdConn(t testing.TB, fd int) *net.UnixConn {
	t.Helper()
	f := os.NewFile(uintptr(fd), "test-socket")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		t.Fatalf("FileConn: %v", err)
	}
	return c.(*net.UnixConn)
}

// pipeFD returns the write end of a fresh pipe as a raw fd, and the read end as a file.
// Neither is closed automatically: tests check who closes what.
func pipeFD(t testing.TB) (w int, r *os.File) {
	t.Helper()
	p, err := newPipe()
	if err != nil {
		t.Fatalf("pipe: %v", err)
	}
	return p[1], os.NewFile(uintptr(p[0]), "pipe-read")
}

// newPipe returns a close-on-exec pipe as raw fds: read end, write end.
func newPipe() (p [2]int, err error) {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	if err := unix.Pipe(p[:]); err != nil {
		return p, err
	}
	unix.CloseOnExec(p[0])
	unix.CloseOnExec(p[1])
	return p, nil
}

// fdIsOpen reports whether fd is an open descriptor in this process.
func fdIsOpen(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == nil
}

// testHost plays the host on one end of a control channel, using the helper's own codec
// (which frame_test.go checks against hand-made bytes).
type testHost struct {
	t    testing.TB
	conn *net.UnixConn
	w    *msgWriter

	mu      sync.Mutex
	nextID  uint32
	pending map[uint32]chan *message

	// events gets every notification, and the end of the stream as nil, in order.
	events  chan *message
	readErr chan error
}

func newTestHost(t testing.TB, conn *net.UnixConn) *testHost {
	h := &testHost{
		t:       t,
		conn:    conn,
		w:       newMsgWriter(conn),
		pending: make(map[uint32]chan *message),
		events:  make(chan *message, 4096),
		readErr: make(chan error, 1),
	}
	go h.readLoop(newMsgReader(conn))
	return h
}

func (h *testHost) readLoop(r *msgReader) {
	defer close(h.events)
	for {
		m, err := r.read()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				h.readErr <- err
			}
			close(h.readErr)
			return
		}
		switch m.kind {
		case kindResponse:
			h.mu.Lock()
			ch := h.pending[m.id]
			delete(h.pending, m.id)
			h.mu.Unlock()
			if ch != nil {
				ch <- m
			} else if m.fd >= 0 {
				unix.Close(m.fd)
			}
		case kindNotification:
			h.events <- m
		}
	}
}

// start sends a request and returns the channel its response will arrive on.
func (h *testHost) start(method string, params map[string]any) chan *message {
	h.mu.Lock()
	h.nextID++
	id := h.nextID
	ch := make(chan *message, 1)
	h.pending[id] = ch
	h.mu.Unlock()
	if err := h.w.send(newRequest(id, method, params)); err != nil {
		h.t.Fatalf("sending %s: %v", method, err)
	}
	return ch
}

// call sends a request and waits up to d for its response.
func (h *testHost) callWithin(d time.Duration, method string, params map[string]any) *message {
	h.t.Helper()
	select {
	case m := <-h.start(method, params):
		if m.fd >= 0 {
			h.t.Cleanup(func() { unix.Close(m.fd) })
		}
		return m
	case <-time.After(d):
		h.t.Fatalf("no response to %s within %v", method, d)
		return nil
	}
}

func (h *testHost) call(method string, params map[string]any) *message {
	h.t.Helper()
	return h.callWithin(10*time.Second, method, params)
}

// mustCall is call that fails the test on an error response.
func (h *testHost) mustCall(method string, params map[string]any) map[string]any {
	h.t.Helper()
	m := h.call(method, params)
	if m.err != nil {
		h.t.Fatalf("%s: %v", method, m.err)
	}
	return m.result
}

func (h *testHost) notify(method string, params map[string]any) {
	h.t.Helper()
	if err := h.w.notify(method, params, -1); err != nil {
		h.t.Fatalf("sending %s: %v", method, err)
	}
}

// hello does the handshake.
func (h *testHost) hello() {
	h.t.Helper()
	h.mustCall("hello", map[string]any{"protocol": 1})
}

// waitEvent returns the next notification named method, skipping others, within d.
func (h *testHost) waitEvent(d time.Duration, method string) *message {
	h.t.Helper()
	deadline := time.After(d)
	for {
		select {
		case m, ok := <-h.events:
			if !ok {
				h.t.Fatalf("channel ended while waiting for %s", method)
			}
			if m.method == method {
				return m
			}
			if m.fd >= 0 {
				unix.Close(m.fd)
			}
		case <-deadline:
			h.t.Fatalf("no %s notification within %v", method, d)
		}
	}
}

// errCode is a response's error code, or "" on success.
func errCode(m *message) string {
	if m.err == nil {
		return ""
	}
	return m.err.Code
}

// uintField returns a result field that must be an unsigned integer.
func uintField(t testing.TB, m map[string]any, key string) uint64 {
	t.Helper()
	n, ok := asUint(m[key])
	if !ok {
		t.Fatalf("field %q = %#v, want an unsigned integer", key, m[key])
	}
	return n
}
