package statestore_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"tailscale.com/ipn"

	"github.com/tsproc/tsproc/helper/internal/statestore"
)

// mapHost answers like a host whose store is a map; failKey's calls fail, hangKey's hang.
type mapHost struct {
	mu      sync.Mutex
	values  map[string][]byte
	failKey string
	hangKey string
}

func (h *mapHost) Call(ctx context.Context, method string, params map[string]any) (map[string]any, error) {
	key := params["key"].(string)
	switch key {
	case h.failKey:
		return nil, errors.New("host store raised OSError")
	case h.hangKey:
		<-ctx.Done()
		return nil, ctx.Err()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	switch method {
	case "state_read":
		if v, ok := h.values[key]; ok {
			return map[string]any{"value": v}, nil
		}
		return map[string]any{"value": nil}, nil
	case "state_write":
		h.values[key] = params["value"].([]byte)
		return map[string]any{}, nil
	}
	return nil, errors.New("unknown method")
}

func TestStore(t *testing.T) {
	h := &mapHost{values: map[string][]byte{}, failKey: "bad", hangKey: "slow"}
	s := statestore.New(h, 50*time.Millisecond)
	if _, err := s.ReadState("_machinekey"); !errors.Is(err, ipn.ErrStateNotExist) {
		t.Fatalf("read of a missing key: %v", err)
	}
	if err := s.WriteState("_machinekey", []byte("privkey:secret")); err != nil {
		t.Fatal(err)
	}
	if v, err := s.ReadState("_machinekey"); err != nil || string(v) != "privkey:secret" {
		t.Fatalf("read back %q, %v", v, err)
	}
	if err := s.WriteState("empty", nil); err != nil {
		t.Fatal(err)
	}
	if v, err := s.ReadState("empty"); err != nil || v == nil || len(v) != 0 {
		t.Fatalf("empty value read back as %v, %v", v, err)
	}
	for _, tc := range []struct{ key, want string }{
		{"bad", "OSError"},
		{"slow", "did not answer within 50ms"},
	} {
		_, err := s.ReadState(ipn.StateKey(tc.key))
		var se *statestore.Error
		if !errors.As(err, &se) || se.Key != tc.key || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("read %q: %v, want a statestore.Error saying %q", tc.key, err, tc.want)
		}
	}
	// No value ever appears in an error.
	if err := s.WriteState("bad", []byte("privkey:secret")); err == nil || strings.Contains(err.Error(), "secret") {
		t.Fatalf("failed write: %v", err)
	}
}
