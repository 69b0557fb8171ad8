package wire_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tsproc/tsproc/helper/internal/wire"
	"github.com/tsproc/tsproc/helper/internal/wire/wiretest"
)

// nextRequest is the helper's next request as the host reads it.
func nextRequest(t *testing.T, h *wiretest.Host) *wire.Message {
	t.Helper()
	select {
	case m := <-h.Requests:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no request from the helper within 10 s")
		return nil
	}
}

func TestDispatcherCall(t *testing.T) {
	h, d, _ := startDispatcher(t, &fakeService{})
	h.Hello()

	type outcome struct {
		res map[string]any
		err error
	}
	done := make(chan outcome, 2)
	call := func(key string) {
		res, err := d.Call(context.Background(), "state_read", map[string]any{"key": key})
		done <- outcome{res, err}
	}
	go call("a")
	first := nextRequest(t, h)
	go call("b")
	second := nextRequest(t, h)
	if first.Method != "state_read" || first.Params["key"] != "a" || second.Params["key"] != "b" || first.ID == second.ID {
		t.Fatalf("requests %+v, %+v", first, second)
	}
	// Answered out of order: each call gets its own answer.
	h.Answer(second.ID, nil, &wire.Error{Code: "state_store", Message: "no"})
	got := <-done
	if re, ok := errors.AsType[*wire.Error](got.err); !ok || re.Code != "state_store" {
		t.Fatalf("second call: %v", got.err)
	}
	h.Answer(first.ID, map[string]any{"value": []byte("v")}, nil)
	got = <-done
	if got.err != nil || string(got.res["value"].([]byte)) != "v" {
		t.Fatalf("first call: %v %v", got.res, got.err)
	}
	// The host still answers requests after an unknown response id (a call given up).
	h.Answer(9999, map[string]any{}, nil)
	h.MustCall("echo", map[string]any{})
}

func TestDispatcherCallGivenUp(t *testing.T) {
	h, d, _ := startDispatcher(t, &fakeService{})
	h.Hello()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := d.Call(ctx, "state_read", map[string]any{"key": "k"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("call past its deadline: %v", err)
	}
	m := nextRequest(t, h)
	h.Answer(m.ID, map[string]any{}, nil) // late: dropped, and the channel lives on
	h.MustCall("echo", map[string]any{})
}

func TestDispatcherCallChannelEnds(t *testing.T) {
	h, d, served := startDispatcher(t, &fakeService{})
	h.Hello()
	errc := make(chan error, 1)
	go func() {
		_, err := d.Call(context.Background(), "state_read", map[string]any{"key": "k"})
		errc <- err
	}()
	nextRequest(t, h)
	h.Conn.Close() // the host goes away without answering
	<-served
	if err := <-errc; !errors.Is(err, wire.ErrChannelEnded) {
		t.Fatalf("call when the channel ended: %v", err)
	}
	if _, err := d.Call(context.Background(), "state_read", nil); !errors.Is(err, wire.ErrChannelEnded) {
		t.Fatalf("call after the end: %v", err)
	}
}
