package main

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/tsproc/tsproc/helper/internal/fdtest"
	"github.com/tsproc/tsproc/helper/internal/wire"
	"github.com/tsproc/tsproc/helper/internal/wire/wiretest"
)

// echoService answers echo with its params: all the fault tests need.
type echoService struct{}

func (echoService) Call(ctx context.Context, method string, params map[string]any) (*wire.Reply, error) {
	if method == "echo" {
		return wire.OKReply(params), nil
	}
	return nil, wire.NewError(wire.CodeUnknownMethod, "no method %q", method)
}

func (echoService) Notification(string, map[string]any) {}

// startFaultDispatcher serves svc with fault f on one end of a socketpair, the way a session
// does, and returns a host on the other, the dispatcher, serve's result and the fault's exit
// calls.
func startFaultDispatcher(t *testing.T, f fault) (*wiretest.Host, *wire.Dispatcher, chan error, chan int) {
	t.Helper()
	helperEnd, hostEnd := fdtest.UnixPair(t)
	r, w, closeFault := withFault(f, wire.NewMsgReader(helperEnd), wire.NewMsgWriter(helperEnd), helperEnd)
	exited := make(chan int, 1)
	if src, ok := r.(*faultSource); ok {
		src.exit = func(code int) { exited <- code }
	}
	d := wire.NewDispatcher(echoService{}, w, dispatcherConfig())
	served := make(chan error, 1)
	go func() { served <- d.Serve(r) }()
	t.Cleanup(func() {
		d.Cancel()
		closeFault()
		d.Close()
		helperEnd.Close()
	})
	return wiretest.NewHost(t, hostEnd), d, served, exited
}

func TestParseFault(t *testing.T) {
	tests := []struct {
		in      string
		want    fault
		wantErr bool
	}{
		{"", fault{}, false},
		{"exit_at_start", fault{kind: faultExitAtStart}, false},
		{"exit_after:up", fault{kind: faultExitAfter, method: "up"}, false},
		{"hang_after:ping", fault{kind: faultHangAfter, method: "ping"}, false},
		{"garbage_after:status", fault{kind: faultGarbageAfter, method: "status"}, false},
		{"protocol:2", fault{kind: faultProtocol, protocol: 2}, false},
		{"protocol:x", fault{}, true},
		{"exit_after:", fault{}, true},
		{"explode", fault{}, true},
		{"explode:now", fault{}, true},
	}
	for _, tt := range tests {
		got, err := parseFault(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("parseFault(%q) = %+v, %v; want %+v, err %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestDispatcherFaults(t *testing.T) {
	t.Run("exit_after", func(t *testing.T) {
		h, _, _, exited := startFaultDispatcher(t, fault{kind: faultExitAfter, method: "echo"})
		h.Hello()
		h.Start("echo", map[string]any{})
		select {
		case code := <-exited:
			if code != 3 {
				t.Fatalf("exit code %d, want 3", code)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no exit")
		}
	})
	t.Run("hang_after", func(t *testing.T) {
		h, _, served, _ := startFaultDispatcher(t, fault{kind: faultHangAfter, method: "echo"})
		h.Hello()
		first := h.Start("echo", map[string]any{})
		second := h.Start("hello", map[string]any{"protocol": 1})
		select {
		case m := <-first:
			t.Fatalf("answer after hang: %+v", m)
		case m := <-second:
			t.Fatalf("answer after hang: %+v", m)
		case err := <-served:
			t.Fatalf("serve returned %v; a hung helper must stay", err)
		case <-time.After(300 * time.Millisecond):
		}
	})
	t.Run("garbage_after", func(t *testing.T) {
		helperEnd, hostEnd := fdtest.UnixPair(t)
		r0, w0, closeFault := withFault(fault{kind: faultGarbageAfter, method: "echo"}, wire.NewMsgReader(helperEnd), wire.NewMsgWriter(helperEnd), helperEnd)
		d := wire.NewDispatcher(echoService{}, w0, dispatcherConfig())
		defer d.Close()
		defer closeFault()
		go d.Serve(r0)
		w := wire.NewMsgWriter(hostEnd)
		r := wire.NewMsgReader(hostEnd)
		w.Send(wire.NewRequest(1, "hello", map[string]any{"protocol": 1}))
		if m, err := r.Read(); err != nil || m.Err != nil {
			t.Fatalf("hello: %v %v", m, err)
		}
		w.Send(wire.NewRequest(2, "echo", map[string]any{"x": 1}))
		if m, err := r.Read(); err != nil || m.ID != 2 || m.Err != nil {
			t.Fatalf("echo must still be answered: %+v %v", m, err)
		}
		_, err := r.Read()
		var pe *wire.ProtocolError
		if !errors.As(err, &pe) || errors.Is(err, io.EOF) {
			t.Fatalf("after the answer: %v, want a protocol error", err)
		}
	})
	t.Run("protocol", func(t *testing.T) {
		h, _, _, _ := startFaultDispatcher(t, fault{kind: faultProtocol, protocol: 7})
		res := h.MustCall("hello", map[string]any{"protocol": 1})
		if wiretest.UintField(t, res, "protocol") != 7 {
			t.Fatalf("hello claimed %v, want 7", res["protocol"])
		}
	})
}
