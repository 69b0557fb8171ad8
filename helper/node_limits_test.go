package main

import (
	"fmt"
	"math"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tsproc/tsproc/helper/internal/wire"
	"github.com/tsproc/tsproc/helper/internal/wire/wiretest"
)

// The node's limits (docs/protocol.md §9): the listener backlog and the listener count. The
// control channel's own limits are tested in internal/wire.

// chanListener is a net.Listener whose connections a test pushes in.
type chanListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newChanListener(n int) *chanListener {
	return &chanListener{conns: make(chan net.Conn, n), closed: make(chan struct{})}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{} }

// TestListenerBacklog: the pump hands over at most backlog connections the host has not
// granted back, and leaves the rest unaccepted (in tsnet, which refuses them in time).
func TestListenerBacklog(t *testing.T) {
	const backlog, offered = 3, 10
	ln := newChanListener(offered)
	for range offered {
		a, b := net.Pipe()
		t.Cleanup(func() { a.Close(); b.Close() })
		ln.conns <- a
	}
	l := newTSListener(1, ln, backlog)
	var mu sync.Mutex
	handed, refuse := 0, false
	ended := make(chan string, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.run(listenerHooks{
			handOver: func(_ *tsListener, c net.Conn) bool {
				mu.Lock()
				defer mu.Unlock()
				c.Close()
				if refuse { // the host did not get it
					return false
				}
				handed++
				return true
			},
			ended: func(_ *tsListener, reason string) { ended <- reason },
		})
	}()
	handedOver := func() int {
		mu.Lock()
		defer mu.Unlock()
		return handed
	}
	// settles waits until the pump has handed over want and then stops.
	settles := func(want int) {
		t.Helper()
		wiretest.WaitFor(t, func() bool { return handedOver() == want }, fmt.Sprintf("%d hand-overs", want))
		time.Sleep(100 * time.Millisecond)
		if got := handedOver(); got != want {
			t.Fatalf("%d hand-overs, want the pump to stop at %d", got, want)
		}
	}
	settles(backlog)
	if left := len(ln.conns); left != offered-backlog {
		t.Fatalf("%d connections left unaccepted, want %d", left, offered-backlog)
	}
	l.grant(1)
	settles(backlog + 1)
	// A grant bigger than what is outstanding restores the full backlog, no more.
	l.grant(math.MaxUint64)
	settles(2*backlog + 1)
	// Hand-overs the host never got are credited back at once.
	mu.Lock()
	refuse = true
	mu.Unlock()
	l.grant(1)
	wiretest.WaitFor(t, func() bool { return len(ln.conns) == 0 }, "the pump to drain refused hand-overs")
	l.close()
	<-done
	select {
	case reason := <-ended:
		t.Fatalf("listener_closed (%s) for a listener the host closed", reason)
	default:
	}
}

// TestLimitsOnAStartedNode: a real tsnet node (whose control server never answers, so it
// never runs; listen and up need only start) holds at most 256 listeners and 1024 requests
// in flight, and says limit beyond.
func TestLimitsOnAStartedNode(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a tsnet node")
	}
	silent, err := net.Listen("tcp", "127.0.0.1:0") // accepts, never answers
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	h, _ := startE2ENode(t, "http://"+silent.Addr().String(), "node-limits", e2eAuthKey)

	listen := func(port int) *wire.Message {
		return h.Call("listen", map[string]any{"network": "tcp", "port": port, "backlog": 1})
	}
	t.Run("listeners per node", func(t *testing.T) {
		// Concurrently, so the re-check after tsnet's Listen is exercised too.
		type result struct {
			port int
			m    *wire.Message
		}
		results := make(chan result, maxListeners+20)
		var wg sync.WaitGroup
		for i := range maxListeners + 20 {
			wg.Go(func() { results <- result{10000 + i, listen(10000 + i)} })
		}
		wg.Wait()
		close(results)
		var ids []uint64
		var refused []int
		for r := range results {
			m := r.m
			switch wiretest.ErrCode(m) {
			case "":
				ids = append(ids, wiretest.UintField(t, m.Result, "listener"))
			case wire.CodeLimit:
				refused = append(refused, r.port)
				if !strings.Contains(m.Err.Message, "256") {
					t.Errorf("limit message %q does not name the bound", m.Err.Message)
				}
			default:
				t.Fatalf("listen: %v", m.Err)
			}
		}
		if len(ids) != maxListeners || len(refused) != 20 {
			t.Fatalf("%d listeners made, %d refused; want %d and 20", len(ids), len(refused), maxListeners)
		}
		if st := h.MustCall("status", map[string]any{"timeout_ms": 5000}); wiretest.UintField(t, st, "listeners") != maxListeners {
			t.Fatalf("status reports %v listeners", st["listeners"])
		}
		// A refused listen left no tsnet listener behind: its port is free once there is room.
		h.MustCall("close_listener", map[string]any{"listener": ids[0]})
		for _, port := range refused {
			m := listen(port)
			if m.Err != nil {
				t.Fatalf("listen on a port refused earlier: %v", m.Err)
			}
			h.MustCall("close_listener", map[string]any{"listener": wiretest.UintField(t, m.Result, "listener")})
		}
		for _, id := range ids[1:] {
			h.MustCall("close_listener", map[string]any{"listener": id})
		}
	})
	t.Run("requests in flight", func(t *testing.T) {
		// up blocks until its timeout on a node that never runs.
		for range wire.MaxInFlight {
			h.Start("up", map[string]any{"timeout_ms": 60000}) // cancelled when the session closes
		}
		// Every one of them is in flight once a later request is answered with limit;
		// requests are handed to goroutines in the order they are read.
		var m *wire.Message
		wiretest.WaitFor(t, func() bool {
			m = h.Call("ping", map[string]any{})
			return wiretest.ErrCode(m) == wire.CodeLimit
		}, "a limit answer")
		if !strings.Contains(m.Err.Message, "1024") {
			t.Fatalf("limit message %q does not name the bound", m.Err.Message)
		}
		// The reader itself is not stuck: hello is answered inline, outside the bound.
		h.MustCall("hello", map[string]any{"protocol": 1})
	})
}

// waitFor polls cond for up to 10 seconds.
