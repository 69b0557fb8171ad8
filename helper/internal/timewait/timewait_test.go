package timewait

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

// A dial that answers nothing until its context ends, the first unanswered times; it records
// each attempt's deadline and how much of it was left when the attempt began.
type attempt struct {
	deadline time.Time
	left     time.Duration
}

func silentFor(unanswered int, attempts *[]attempt) func(context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		if d, ok := ctx.Deadline(); ok {
			*attempts = append(*attempts, attempt{d, time.Until(d)})
		}
		if len(*attempts) <= unanswered {
			<-ctx.Done()
			return nil, ctx.Err()
		}
		c, _ := net.Pipe()
		return c, nil
	}
}

// The checks hold however late the scheduler runs each step (the machine may be loaded): an
// attempt's bound is at least what was left of it when it began, and at most the time from the
// previous attempt's deadline (or the call) to its own, since it began after that.
func TestDialRetriesAnUnansweredHandshakeWithDoublingBounds(t *testing.T) {
	var attempts []attempt
	called := time.Now()
	c, err := dialFrom(context.Background(), 20*time.Millisecond, silentFor(2, &attempts))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	want := []time.Duration{20 * time.Millisecond, 40 * time.Millisecond, 80 * time.Millisecond}
	if len(attempts) != len(want) {
		t.Fatalf("%d attempts, want %d", len(attempts), len(want))
	}
	since := called
	for i, a := range attempts {
		if a.left > want[i] || a.deadline.Sub(since) < want[i] {
			t.Errorf("attempt %d: %v left at its start, %v after the one before; want a bound of %v",
				i, a.left, a.deadline.Sub(since), want[i])
		}
		since = a.deadline
	}
}

func TestDialEndsWithTheCallersDeadline(t *testing.T) {
	var attempts []attempt
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := dialFrom(ctx, 30*time.Millisecond, silentFor(1000, &attempts))
	if !errors.Is(err, context.DeadlineExceeded) || ctx.Err() == nil {
		t.Fatalf("err %v, ctx %v: want the caller's deadline", err, ctx.Err())
	}
	// 30, 60, 120, 240 and 480 ms, then the rest of the caller's second.
	caller, _ := ctx.Deadline()
	if len(attempts) < 2 {
		t.Fatalf("%d attempts, want the short ones and then the caller's deadline", len(attempts))
	}
	for i, a := range attempts[:len(attempts)-1] {
		if !a.deadline.Before(caller) {
			t.Errorf("attempt %d ends at the caller's deadline, want a shorter bound", i)
		}
	}
	// The last attempt is bounded by the caller's deadline, unless that deadline passed while
	// the attempt before it was ending (a loaded machine): then there is no last attempt.
	if last := attempts[len(attempts)-1]; last.deadline.After(caller) {
		t.Errorf("the last attempt ends %v after the caller's deadline", last.deadline.Sub(caller))
	}
}

func TestDialReturnsOtherErrorsAtOnce(t *testing.T) {
	refused := errors.New("connection refused")
	calls := 0
	_, err := dialFrom(context.Background(), time.Second, func(context.Context) (net.Conn, error) {
		calls++
		return nil, refused
	})
	if !errors.Is(err, refused) || calls != 1 {
		t.Fatalf("err %v after %d calls, want %v after 1", err, calls, refused)
	}
}

// DialTCP picks ports itself only with the stack; if a Tailscale upgrade moves it, DialTCP
// silently falls back to random ports and the refusal of docs/reliability.md returns.
func TestNetstackStackIsFound(t *testing.T) {
	if ipstackField == nil {
		t.Fatal("netstack.Impl has no ipstack *stack.Stack field any more")
	}
}
