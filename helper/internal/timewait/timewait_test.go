package timewait

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

// A dial that answers nothing until its context ends, the first unanswered times.
func silentFor(unanswered int, attempts *[]time.Duration) func(context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		if d, ok := ctx.Deadline(); ok {
			*attempts = append(*attempts, time.Until(d).Round(10*time.Millisecond))
		}
		if len(*attempts) <= unanswered {
			<-ctx.Done()
			return nil, ctx.Err()
		}
		c, _ := net.Pipe()
		return c, nil
	}
}

func TestDialRetriesAnUnansweredHandshakeWithDoublingBounds(t *testing.T) {
	var attempts []time.Duration
	c, err := dialFrom(context.Background(), 20*time.Millisecond, silentFor(2, &attempts))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	want := []time.Duration{20 * time.Millisecond, 40 * time.Millisecond, 80 * time.Millisecond}
	if len(attempts) != len(want) {
		t.Fatalf("attempts with bounds %v, want %v", attempts, want)
	}
	for i := range want {
		if attempts[i] > want[i] || attempts[i] < want[i]-10*time.Millisecond {
			t.Errorf("attempt %d bounded at %v, want %v", i, attempts[i], want[i])
		}
	}
}

func TestDialEndsWithTheCallersDeadline(t *testing.T) {
	var attempts []time.Duration
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := dialFrom(ctx, 30*time.Millisecond, silentFor(1000, &attempts))
	if !errors.Is(err, context.DeadlineExceeded) || ctx.Err() == nil {
		t.Fatalf("err %v, ctx %v: want the caller's deadline", err, ctx.Err())
	}
	if len(attempts) != 3 { // 30 ms, 60 ms, and the last 10 ms of the caller's 100
		t.Errorf("%d attempts, want 3", len(attempts))
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
