// Package statestore is an ipn.StateStore kept by the host: tsnet's reads and writes of the
// node's state (its keys, profile and prefs) become state_read and state_write requests on the
// control channel (docs/protocol.md §4b), so the state lives wherever the host's program puts
// it — a database, a Kubernetes Secret, a vault — and never on the helper's disk.
//
// Values are secrets (the machine and node private keys are among them): nothing here logs or
// formats one, and errors name the key only.
package statestore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"tailscale.com/ipn"
)

// Caller sends one request to the host and returns its result (the control channel's
// wire.Dispatcher.Call).
type Caller interface {
	Call(ctx context.Context, method string, params map[string]any) (map[string]any, error)
}

// Error is a failure of the host's store: it raised, did not answer in time, or the channel
// ended. The node turns it into the state_store error code.
type Error struct {
	Op, Key string
	Err     error
}

func (e *Error) Error() string {
	return fmt.Sprintf("state store: %s %q: %v", e.Op, e.Key, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Store is an ipn.StateStore whose reads and writes go to the host.
type Store struct {
	c       Caller
	timeout time.Duration

	// mu makes the calls one at a time: a write and a later one to the same key are never
	// reordered on the way to a store that may handle requests concurrently.
	mu sync.Mutex

	// failed is the last call's *Error, kept because tsnet reports a failed read as text
	// (its errors do not wrap ours).
	failed atomic.Pointer[Error]
}

var _ ipn.StateStore = (*Store)(nil)

// New returns a store that asks c, giving each call at most timeout.
func New(c Caller, timeout time.Duration) *Store { return &Store{c: c, timeout: timeout} }

// ReadState implements ipn.StateStore: the host's value, or ipn.ErrStateNotExist.
func (s *Store) ReadState(id ipn.StateKey) ([]byte, error) {
	res, err := s.call("state_read", map[string]any{"key": string(id)}, string(id))
	if err != nil {
		return nil, err
	}
	switch v := res["value"].(type) {
	case nil:
		return nil, ipn.ErrStateNotExist
	case []byte:
		return v, nil
	}
	return nil, &Error{Op: "state_read", Key: string(id), Err: errors.New(`the host's answer has no "value" bytes`)}
}

// WriteState implements ipn.StateStore.
func (s *Store) WriteState(id ipn.StateKey, bs []byte) error {
	if bs == nil {
		bs = []byte{} // msgpack bin, not nil: an empty value is still a value
	}
	_, err := s.call("state_write", map[string]any{"key": string(id), "value": bs}, string(id))
	return err
}

func (s *Store) call(method string, params map[string]any, key string) (map[string]any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	res, err := s.c.Call(ctx, method, params)
	if errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("the host's store did not answer within %v", s.timeout)
	}
	if err != nil {
		e := &Error{Op: method, Key: key, Err: err}
		s.failed.Store(e)
		return nil, e
	}
	return res, nil
}

// Failed is the error of the last call that failed, or nil.
func (s *Store) Failed() *Error { return s.failed.Load() }
