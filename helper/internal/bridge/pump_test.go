package bridge

import (
	"bytes"
	"crypto/rand"
	"io"
	"testing"
	"time"
)

// TestBridgePumpsEveryByte sends sizes around the pumps' buffer boundaries (bridge.go: a
// small buffer that switches to a pooled large one, and a host-side read that waits without
// a buffer) both ways at once, and checks that every byte arrives in order.
func TestBridgePumpsEveryByte(t *testing.T) {
	sizes := []int{
		1, pumpSmallBufSize - 1, pumpSmallBufSize, pumpSmallBufSize + 1,
		pumpLargeBufSize - 1, pumpLargeBufSize, pumpLargeBufSize + pumpSmallBufSize,
		3*pumpLargeBufSize + 17,
	}
	for _, size := range sizes {
		peer, tn := tcpPair(t)
		rec := &connEndRecord{}
		_, host, finished := startTestBridge(t, tn, rec)
		toHost, toPeer := randomBytes(t, size), randomBytes(t, size)

		gotHost, gotPeer := make(chan []byte, 1), make(chan []byte, 1)
		go func() { b, _ := io.ReadAll(host); gotHost <- b }()
		go func() { b, _ := io.ReadAll(peer); gotPeer <- b }()
		go func() { peer.Write(toHost); peer.CloseWrite() }()
		go func() { host.Write(toPeer); host.CloseWrite() }()

		for _, c := range []struct {
			what      string
			got       chan []byte
			want      []byte
			direction string
		}{
			{"host", gotHost, toHost, "tailnet → host"},
			{"peer", gotPeer, toPeer, "host → tailnet"},
		} {
			select {
			case b := <-c.got:
				if !bytes.Equal(b, c.want) {
					t.Errorf("size %d, %s: got %d bytes, want %d (equal prefix %d)", size,
						c.direction, len(b), len(c.want), commonPrefix(b, c.want))
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("size %d, %s: no EOF within 10 s", size, c.direction)
			}
		}
		waitClosed(t, finished, "bridge end")
		if calls := rec.get(); len(calls) != 1 || !calls[0].clean {
			t.Errorf("size %d: conn_end calls = %+v, want one clean", size, calls)
		}
	}
}

// TestBridgeFlowsAfterIdle checks that after a burst (large buffers) and a pause (the
// host → tailnet pump parked without a buffer), a small message still goes through at once.
func TestBridgeFlowsAfterIdle(t *testing.T) {
	peer, tn := tcpPair(t)
	rec := &connEndRecord{}
	_, host, _ := startTestBridge(t, tn, rec)
	burst := randomBytes(t, 2*pumpLargeBufSize)
	go host.Write(burst)
	if _, err := io.ReadFull(peer, make([]byte, len(burst))); err != nil {
		t.Fatal(err)
	}
	// Idle now; then a small message must still go through.
	time.Sleep(20 * time.Millisecond)
	host.Write([]byte("late"))
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, 4)
	if _, err := io.ReadFull(peer, got); err != nil || string(got) != "late" {
		t.Fatalf("after idling: read %q, %v", got, err)
	}
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func commonPrefix(a, b []byte) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}
