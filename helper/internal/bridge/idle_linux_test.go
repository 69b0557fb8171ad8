package bridge

import (
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/tsproc/tsproc/helper/internal/wire/wiretest"
)

// hostPumpsRunning counts goroutines running a host → tailnet pump.
func hostPumpsRunning() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), "(*Bridge).runHostPump")
}

// TestBridgeIdleHostPumpHoldsNoGoroutine checks the idle hand-over: a bridge that carries
// nothing has no host → tailnet pump goroutine; data wakes one, which forwards it in order
// and hands back once idle again; EOF and half-close still work from the idle state.
func TestBridgeIdleHostPumpHoldsNoGoroutine(t *testing.T) {
	peer, tn := tcpPair(t)
	rec := &connEndRecord{}
	b, host, finished := startTestBridge(t, tn, rec)
	wiretest.WaitFor(t, func() bool { return b.armed.Load() && hostPumpsRunning() == 0 }, "idle before the first byte")
	for i := range 3 {
		msg := strings.Repeat(string(rune('a'+i)), 100)
		if _, err := host.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(peer, got); err != nil || string(got) != msg {
			t.Fatalf("message %d: %q, %v", i, got, err)
		}
		wiretest.WaitFor(t, func() bool { return b.armed.Load() && hostPumpsRunning() == 0 }, "idle again")
	}
	// The host half-closes while idle: the peer reads EOF (passed on as CloseWrite).
	host.CloseWrite()
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := peer.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after the host's half-close: %d, %v", n, err)
	}
	// The other direction still works, and its EOF ends the bridge.
	peer.Write([]byte("back"))
	peer.CloseWrite()
	got, err := io.ReadAll(host)
	if err != nil || string(got) != "back" {
		t.Fatalf("tailnet → host: %q, %v", got, err)
	}
	waitClosed(t, finished, "bridge end")
	if calls := rec.get(); len(calls) != 1 || !calls[0].clean {
		t.Errorf("conn_end calls: %+v", calls)
	}
}

// TestBridgeAbortWhileIdle checks that a bridge whose host pump is idle in the poller still
// ends (finished is called once) when the tailnet side ends it.
func TestBridgeAbortWhileIdle(t *testing.T) {
	peer, tn := tcpPair(t)
	rec := &connEndRecord{}
	b, _, finished := startTestBridge(t, tn, rec)
	wiretest.WaitFor(t, func() bool { return b.armed.Load() }, "idle")
	peer.SetLinger(0)
	peer.Close() // a reset: the tailnet → host pump fails and aborts the bridge
	waitClosed(t, finished, "bridge end")
	if b.armed.Load() {
		t.Error("still armed after the end")
	}
}
