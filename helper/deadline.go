package main

import (
	"context"
	"time"

	"github.com/tsproc/tsproc/helper/internal/wire"
)

// Every method that waits — on tsnet, its LocalAPI, the control or ACME server — takes the
// caller's remaining time as timeout_ms (docs/protocol.md §4): the host's deadline is the only
// one, and no constant here has to agree with one in Python.

// msDuration converts a timeout_ms parameter (already capped by maxTimeoutMS).
func msDuration(ms uint64) time.Duration { return time.Duration(ms) * time.Millisecond }

// readTimeout reads a method's timeout_ms: required, 0..maxTimeoutMS, like dial's.
func readTimeout(p *wire.ParamReader) uint64 { return p.Uint("timeout_ms", 0, maxTimeoutMS) }

// callContext is ctx (the request's, cancelled when the helper shuts down) bounded by
// timeoutMS.
func callContext(ctx context.Context, timeoutMS uint64) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, msDuration(timeoutMS))
}

// callError is the answer to a call bounded by callContext that failed with err: timeout when
// the caller's time ran out (whatever tsnet made of the cancelled context), internal when the
// helper is shutting down, err itself otherwise.
func (n *node) callError(ctx, callCtx context.Context, what string, timeoutMS uint64, err error) error {
	switch {
	case ctx.Err() != nil:
		return wire.NewError(wire.CodeInternal, "%s cancelled: the helper is shutting down", what)
	case callCtx.Err() != nil:
		return wire.NewError(wire.CodeTimeout, "%s: no answer within %d ms%s", what, timeoutMS, n.health())
	}
	return err
}
