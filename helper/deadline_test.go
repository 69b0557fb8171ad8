package main

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/tsproc/tsproc/helper/internal/wire"
)

// TestCallError: a call whose timeout_ms ran out answers timeout, whatever tsnet made of the
// cancelled context; one cut short by the helper's shutdown answers internal; any other
// failure keeps its own error.
func TestCallError(t *testing.T) {
	n := newNode(nil, false)
	own := wire.NewError(wire.CodeTLSUnavailable, "no certificate")
	expired := func(parent context.Context) context.Context {
		ctx, cancel := callContext(parent, 0)
		t.Cleanup(cancel)
		<-ctx.Done()
		return ctx
	}
	live, cancelLive := callContext(t.Context(), 60_000)
	defer cancelLive()
	shutDown, shut := context.WithCancel(t.Context())
	shut()
	tests := []struct {
		name         string
		parent, call context.Context
		wantCode     string
		wantText     string
	}{
		{"time ran out", t.Context(), expired(t.Context()), wire.CodeTimeout, "cert_pair: no answer within 0 ms"},
		{"helper shutting down", shutDown, expired(shutDown), wire.CodeInternal, "shutting down"},
		{"failed in time", t.Context(), live, wire.CodeTLSUnavailable, "no certificate"},
	}
	for _, tt := range tests {
		err := n.callError(tt.parent, tt.call, "cert_pair", 0, own)
		var we *wire.Error
		if !errors.As(err, &we) || we.Code != tt.wantCode || !strings.Contains(we.Message, tt.wantText) {
			t.Errorf("%s: got %v, want %s containing %q", tt.name, err, tt.wantCode, tt.wantText)
		}
	}
}
