package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The bounds of docs/protocol.md §9, each hit on purpose: the helper refuses the excess with a
// typed error (or, for framing, a protocol error) and keeps serving.

// TestDecodeBodyLyingLengthsDoNotAllocate: a length field is checked against the bytes that
// are really there before anything is allocated for it. (A bin32 claiming 4 GiB used to be
// allocated in full by the msgpack library before the read failed.)
func TestDecodeBodyLyingLengthsDoNotAllocate(t *testing.T) {
	prefix := []byte{0x93, 0x02, 0xa1, 'x', 0x81, 0xa1, 'a'} // [2, "x", {"a": …
	for _, tt := range []struct {
		name string
		head []byte
	}{
		{"bin32", []byte{0xc6, 0xff, 0xff, 0xff, 0xff}},
		{"str32", []byte{0xdb, 0xff, 0xff, 0xff, 0xff}},
		{"array32", []byte{0xdd, 0xff, 0xff, 0xff, 0xff}},
		{"map32", []byte{0xdf, 0xff, 0xff, 0xff, 0xff}},
		{"bin16", []byte{0xc5, 0xff, 0xff}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			body := append(append(append([]byte(nil), prefix...), tt.head...), "a few bytes"...)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := decodeBody(body)
			runtime.ReadMemStats(&after)
			if _, ok := errors.AsType[*protocolError](err); !ok {
				t.Fatalf("err = %v, want a protocol error", err)
			}
			// The library reads strings in steps of 1 MiB, and a bin or an array takes what
			// the body holds: a few MiB at most, nowhere near the 4 GiB claimed.
			if got := after.TotalAlloc - before.TotalAlloc; got > 16<<20 {
				t.Fatalf("decoding a %d-byte body allocated %d MiB", len(body), got>>20)
			}
		})
	}
}

// bigService answers "big" with a result of the requested size.
type bigService struct{ fakeService }

func (s *bigService) call(ctx context.Context, method string, params map[string]any) (*reply, error) {
	if method != "big" {
		return s.fakeService.call(ctx, method, params)
	}
	size, _ := asUint(params["size"])
	withFD, _ := params["with_fd"].(bool)
	rep := okReply(map[string]any{"blob": strings.Repeat("b", int(size))})
	if withFD {
		p, err := newPipe()
		if err != nil {
			return nil, err
		}
		unix.Close(p[0])
		rep.fd = p[1]
		rep.result["fd"] = true
		rep.after = func(sent bool) {
			s.mu.Lock()
			s.afters = append(s.afters, sent)
			s.mu.Unlock()
		}
	}
	return rep, nil
}

// TestFrameCap: a frame over 1 MiB is refused from its header alone, in both directions, and
// an answer too big for a frame becomes a limit error instead of silence.
func TestFrameCap(t *testing.T) {
	t.Run("incoming header over the cap", func(t *testing.T) {
		helperEnd, hostEnd := unixPair(t)
		d := newDispatcher(&fakeService{}, newMsgWriter(helperEnd), fault{})
		defer d.close()
		served := make(chan error, 1)
		go func() { served <- d.serve(newMsgReader(helperEnd)) }()
		// Only the header: the helper must not wait for a body it will refuse anyway.
		var hdr [4]byte
		hdr[0], hdr[1], hdr[2], hdr[3] = 0x00, 0x10, 0x00, 0x01 // maxFrameBody + 1
		hostEnd.Write(hdr[:])
		select {
		case err := <-served:
			if _, ok := errors.AsType[*protocolError](err); !ok || !strings.Contains(err.Error(), "outside 1..1048576") {
				t.Fatalf("serve: %v, want a protocol error naming the bound", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the helper waited for the body of an oversized frame")
		}
	})
	t.Run("incoming frame of exactly the cap", func(t *testing.T) {
		h, _, _ := startDispatcher(t, &fakeService{}, fault{})
		h.hello()
		// A request whose body is exactly maxFrameBody bytes long is still served.
		padLen := maxFrameBody - 64
		for range 5 {
			f, err := encodeFrame(newRequest(2, "echo", map[string]any{"pad": strings.Repeat("p", padLen)}))
			if err != nil {
				t.Fatal(err)
			}
			padLen += maxFrameBody - (len(f) - frameHeaderLen)
		}
		// The answer, [1, id, nil, {pad}], is a few bytes shorter than the request.
		if res := h.mustCall("echo", map[string]any{"pad": strings.Repeat("p", padLen)}); len(res["pad"].(string)) != padLen {
			t.Fatal("echo of a full frame came back changed")
		}
	})
	t.Run("outgoing answer over the cap", func(t *testing.T) {
		svc := &bigService{}
		h, _, _ := startDispatcher(t, svc, fault{})
		h.hello()
		if m := h.call("big", map[string]any{"size": 1000}); m.err != nil {
			t.Fatalf("small answer: %v", m.err)
		}
		m := h.callWithin(5*time.Second, "big", map[string]any{"size": maxFrameBody})
		if errCode(m) != codeLimit || !strings.Contains(m.err.Message, "1048576") {
			t.Fatalf("oversized answer: %+v, want a limit error naming the bound", m.err)
		}
		// One that carried an fd: the fd is closed, and the hand-over hook hears it failed.
		m = h.callWithin(5*time.Second, "big", map[string]any{"size": maxFrameBody, "with_fd": true})
		if errCode(m) != codeLimit || m.fd >= 0 {
			t.Fatalf("oversized answer with an fd: %+v (fd %d), want a limit error and no fd", m.err, m.fd)
		}
		waitFor(t, func() bool {
			svc.mu.Lock()
			defer svc.mu.Unlock()
			return len(svc.afters) == 1 && !svc.afters[0]
		}, "the after hook to report a failed hand-over")
		h.mustCall("echo", map[string]any{}) // still serving
	})
}

// TestFDsPerMessage: at most one fd belongs to a message. Extra fds wait in the FIFO for a
// message to claim them, at most 64 of them; every one is closed whatever happens.
func TestFDsPerMessage(t *testing.T) {
	t.Run("a second fd with one message", func(t *testing.T) {
		h, _, _ := startDispatcher(t, &fakeService{}, fault{})
		h.hello()
		rs := &rawSender{t: t, c: h.conn}
		rs.write(encodedFrame(t, newNotification("grant", map[string]any{"fd": true})), 2)
		h.mustCall("echo", map[string]any{})
		if !writeEndClosed(t, rs.readEnds[0]) {
			t.Fatal("the claimed fd is still open")
		}
		// The second fd is unclaimed but within the bound; the next message with an fd
		// takes it, and the helper closes it.
		rs.write(encodedFrame(t, newNotification("grant", map[string]any{"fd": true})), 0)
		h.mustCall("echo", map[string]any{})
		if !writeEndClosed(t, rs.readEnds[1]) {
			t.Fatal("the second fd is still open")
		}
	})
	t.Run("more unclaimed fds than the bound", func(t *testing.T) {
		h, _, served := startDispatcher(t, &fakeService{}, fault{})
		h.hello()
		rs := &rawSender{t: t, c: h.conn}
		rs.write(encodedFrame(t, newNotification("x", nil)), maxUnclaimedFDs/2)
		rs.write(encodedFrame(t, newNotification("x", nil)), maxUnclaimedFDs/2+1)
		select {
		case err := <-served:
			if err == nil || !strings.Contains(err.Error(), "no message to claim them") {
				t.Fatalf("serve: %v, want a protocol error about unclaimed fds", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the helper kept reading with 65 unclaimed fds")
		}
		for i, r := range rs.readEnds {
			if !writeEndClosed(t, r) {
				t.Errorf("fd %d is still open", i)
			}
		}
	})
}

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
		waitFor(t, func() bool { return handedOver() == want }, fmt.Sprintf("%d hand-overs", want))
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
	waitFor(t, func() bool { return len(ln.conns) == 0 }, "the pump to drain refused hand-overs")
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

	listen := func(port int) *message {
		return h.call("listen", map[string]any{"network": "tcp", "port": port, "backlog": 1})
	}
	t.Run("listeners per node", func(t *testing.T) {
		// Concurrently, so the re-check after tsnet's Listen is exercised too.
		type result struct {
			port int
			m    *message
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
			switch errCode(m) {
			case "":
				ids = append(ids, uintField(t, m.result, "listener"))
			case codeLimit:
				refused = append(refused, r.port)
				if !strings.Contains(m.err.Message, "256") {
					t.Errorf("limit message %q does not name the bound", m.err.Message)
				}
			default:
				t.Fatalf("listen: %v", m.err)
			}
		}
		if len(ids) != maxListeners || len(refused) != 20 {
			t.Fatalf("%d listeners made, %d refused; want %d and 20", len(ids), len(refused), maxListeners)
		}
		if st := h.mustCall("status", map[string]any{}); uintField(t, st, "listeners") != maxListeners {
			t.Fatalf("status reports %v listeners", st["listeners"])
		}
		// A refused listen left no tsnet listener behind: its port is free once there is room.
		h.mustCall("close_listener", map[string]any{"listener": ids[0]})
		for _, port := range refused {
			m := listen(port)
			if m.err != nil {
				t.Fatalf("listen on a port refused earlier: %v", m.err)
			}
			h.mustCall("close_listener", map[string]any{"listener": uintField(t, m.result, "listener")})
		}
		for _, id := range ids[1:] {
			h.mustCall("close_listener", map[string]any{"listener": id})
		}
	})
	t.Run("requests in flight", func(t *testing.T) {
		// up blocks until its timeout on a node that never runs.
		for range maxInFlight {
			h.start("up", map[string]any{"timeout_ms": 60000}) // cancelled when the session closes
		}
		// Every one of them is in flight once a later request is answered with limit;
		// requests are handed to goroutines in the order they are read.
		var m *message
		waitFor(t, func() bool {
			m = h.call("ping", map[string]any{})
			return errCode(m) == codeLimit
		}, "a limit answer")
		if !strings.Contains(m.err.Message, "1024") {
			t.Fatalf("limit message %q does not name the bound", m.err.Message)
		}
		// The reader itself is not stuck: hello is answered inline, outside the bound.
		h.mustCall("hello", map[string]any{"protocol": 1})
	})
}

// waitFor polls cond for up to 10 seconds.
func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
