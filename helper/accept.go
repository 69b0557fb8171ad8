package main

import (
	"net"
	"sync"
)

// A tsListener runs the accept pump of one tailnet listener with the grant-based backlog of
// docs/protocol.md §7.
//
// tsnet closes a connection that nobody Accepts within one second, so the pump accepts
// eagerly whenever it has credit; when the host holds backlog connections it has not yet
// granted back, the pump stops calling Accept and the excess waits in (and is refused by)
// tsnet, never in the host.
type tsListener struct {
	id      uint64
	ln      net.Listener
	backlog int

	mu          sync.Mutex
	outstanding int  // handed over, not yet granted back
	asked       bool // close was called: the end is expected, no listener_closed

	credit chan struct{} // 1-buffered: outstanding went down
	stop   chan struct{} // closed by close
	done   chan struct{} // closed when the pump has returned
}

func newTSListener(id uint64, ln net.Listener, backlog int) *tsListener {
	return &tsListener{
		id:      id,
		ln:      ln,
		backlog: backlog,
		credit:  make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
}

// listenerHooks is what the pump needs from the node.
type listenerHooks struct {
	// handOver passes an accepted connection to the host. It owns c from then on and
	// reports whether the host got it.
	handOver func(l *tsListener, c net.Conn) bool
	// ended reports an end the host did not ask for; reason says why.
	ended func(l *tsListener, reason string)
}

// run is the accept pump. It returns when the listener is closed, by close or underfoot.
func (l *tsListener) run(h listenerHooks) {
	defer close(l.done)
	for {
		if !l.waitForCredit() {
			return
		}
		c, err := l.ln.Accept()
		if err != nil {
			l.mu.Lock()
			asked := l.asked
			l.mu.Unlock()
			if !asked {
				h.ended(l, err.Error())
			}
			return
		}
		l.mu.Lock()
		l.outstanding++
		l.mu.Unlock()
		if !h.handOver(l, c) {
			// The host never got it, so it will never grant it back.
			l.grant(1)
		}
	}
}

// waitForCredit blocks while the host holds backlog ungranted connections. It returns
// false if the listener was closed meanwhile.
func (l *tsListener) waitForCredit() bool {
	for {
		l.mu.Lock()
		ok := l.outstanding < l.backlog
		l.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-l.credit:
		case <-l.stop:
			return false
		}
	}
}

// grant returns n connections of credit (the grant notification).
func (l *tsListener) grant(n uint64) {
	l.mu.Lock()
	if n >= uint64(l.outstanding) {
		l.outstanding = 0
	} else {
		l.outstanding -= int(n)
	}
	l.mu.Unlock()
	select {
	case l.credit <- struct{}{}:
	default:
	}
}

// close closes the listener on request and waits for the pump to return.
func (l *tsListener) close() {
	l.mu.Lock()
	already := l.asked
	l.asked = true
	l.mu.Unlock()
	if !already {
		close(l.stop)
		l.ln.Close()
	}
	<-l.done
}
