//go:build !linux

package bridge

// Without epoll, the host → tailnet pump keeps its goroutine for the connection's life,
// parked in the Go runtime's poller without a buffer (see idle_linux.go).

type bridgeIdleState struct{}

// startHostPump starts the host → tailnet direction; done is called when it has ended.
func (b *Bridge) startHostPump(done func()) {
	goPump(func() {
		defer done()
		b.finishHostPump(b.copyFromHost())
	})
}

func (b *Bridge) disarm() {}
