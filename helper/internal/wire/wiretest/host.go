// Package wiretest has test doubles for both ends of the control channel: socketpairs and
// pipes as raw fds, and Host, which plays the host with the helper's own codec (whose bytes
// frame_test.go checks against hand-made ones).
package wiretest

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tsproc/tsproc/helper/internal/wire"
)

// Test doubles for the host side of the control channel.

// Host plays the host on one end of a control channel, using the helper's own codec
// (which frame_test.go checks against hand-made bytes).
type Host struct {
	t    testing.TB
	Conn *net.UnixConn
	W    *wire.MsgWriter // the host's writer

	mu      sync.Mutex
	nextID  uint32
	pending map[uint32]chan *wire.Message

	// events gets every notification, and the end of the stream as nil, in order.
	Events chan *wire.Message
	// Requests gets every request of the helper's (answer them with Answer).
	Requests chan *wire.Message
	ReadErr  chan error
}

func NewHost(t testing.TB, conn *net.UnixConn) *Host {
	h := &Host{
		t:        t,
		Conn:     conn,
		W:        wire.NewMsgWriter(conn),
		pending:  make(map[uint32]chan *wire.Message),
		Events:   make(chan *wire.Message, 4096),
		Requests: make(chan *wire.Message, 64),
		ReadErr:  make(chan error, 1),
	}
	go h.readLoop(wire.NewMsgReader(conn))
	return h
}

func (h *Host) readLoop(r *wire.MsgReader) {
	defer close(h.Events)
	for {
		m, err := r.Read()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				h.ReadErr <- err
			}
			close(h.ReadErr)
			return
		}
		switch m.Kind {
		case wire.KindResponse:
			h.mu.Lock()
			ch := h.pending[m.ID]
			delete(h.pending, m.ID)
			h.mu.Unlock()
			if ch != nil {
				ch <- m
			} else if m.FD >= 0 {
				unix.Close(m.FD)
			}
		case wire.KindNotification:
			h.Events <- m
		case wire.KindRequest:
			h.Requests <- m
		}
	}
}

// Start sends a request and returns the channel its response will arrive on.
func (h *Host) Start(method string, params map[string]any) chan *wire.Message {
	h.mu.Lock()
	h.nextID++
	id := h.nextID
	ch := make(chan *wire.Message, 1)
	h.pending[id] = ch
	h.mu.Unlock()
	if err := h.W.Send(wire.NewRequest(id, method, params)); err != nil {
		h.t.Fatalf("sending %s: %v", method, err)
	}
	return ch
}

// Call sends a request and waits up to d for its response.
func (h *Host) CallWithin(d time.Duration, method string, params map[string]any) *wire.Message {
	h.t.Helper()
	select {
	case m := <-h.Start(method, params):
		if m.FD >= 0 {
			h.t.Cleanup(func() { unix.Close(m.FD) })
		}
		return m
	case <-time.After(d):
		h.t.Fatalf("no response to %s within %v", method, d)
		return nil
	}
}

func (h *Host) Call(method string, params map[string]any) *wire.Message {
	h.t.Helper()
	return h.CallWithin(10*time.Second, method, params)
}

// MustCall is call that fails the test on an error response.
func (h *Host) MustCall(method string, params map[string]any) map[string]any {
	h.t.Helper()
	m := h.Call(method, params)
	if m.Err != nil {
		h.t.Fatalf("%s: %v", method, m.Err)
	}
	return m.Result
}

func (h *Host) Notify(method string, params map[string]any) {
	h.t.Helper()
	if err := wire.Notify(h.W, method, params, -1); err != nil {
		h.t.Fatalf("sending %s: %v", method, err)
	}
}

// Answer sends the response to the helper's request id: result, or the error rpcErr.
func (h *Host) Answer(id uint32, result map[string]any, rpcErr *wire.Error) {
	h.t.Helper()
	if err := h.W.Send(wire.NewResponse(id, result, rpcErr)); err != nil {
		h.t.Fatalf("answering %d: %v", id, err)
	}
}

// Hello does the handshake.
func (h *Host) Hello() {
	h.t.Helper()
	h.MustCall("hello", map[string]any{"protocol": 1})
}

// WaitEvent returns the next notification named method, skipping others, within d.
func (h *Host) WaitEvent(d time.Duration, method string) *wire.Message {
	h.t.Helper()
	deadline := time.After(d)
	for {
		select {
		case m, ok := <-h.Events:
			if !ok {
				h.t.Fatalf("channel ended while waiting for %s", method)
			}
			if m.Method == method {
				return m
			}
			if m.FD >= 0 {
				unix.Close(m.FD)
			}
		case <-deadline:
			h.t.Fatalf("no %s notification within %v", method, d)
		}
	}
}

// ErrCode is a response's error code, or "" on success.
func ErrCode(m *wire.Message) string {
	if m.Err == nil {
		return ""
	}
	return m.Err.Code
}

// UintField returns a result field that must be an unsigned integer.
func UintField(t testing.TB, m map[string]any, key string) uint64 {
	t.Helper()
	n, ok := wire.AsUint(m[key])
	if !ok {
		t.Fatalf("field %q = %#v, want an unsigned integer", key, m[key])
	}
	return n
}

// WaitFor polls cond until it holds, failing the test after ten seconds.
func WaitFor(t testing.TB, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
