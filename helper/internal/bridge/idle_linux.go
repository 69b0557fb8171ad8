package bridge

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Idle host → tailnet pumps hold no goroutine (Linux). A bridge whose socketpair has been
// quiet for hostIdleAfter (and every bridge before its first byte) hands its end to one
// process-wide epoll poller and its pump goroutine returns; when the end becomes readable
// again (data, EOF, or an error), the poller starts a new pump goroutine. A connection that
// keeps talking stays on the Go runtime's poller and never pays for the hand-over. The
// tailnet → host pump keeps its goroutine: a tailnet connection's Read cannot be polled.
//
// Each registration is EPOLLONESHOT and the bridge's armed flag is what hands the pump over:
// whoever swaps it from true to false (the poller on an event, or abort on a close) owns
// the pump from then on, so at most one pump goroutine runs and the end of the pump is
// reported exactly once.

// hostIdleAfter is how long a pump waits in the Go poller before it hands over.
const hostIdleAfter = 100 * time.Millisecond

var errHostIdle = errors.New("host end idle")

type idlePoller struct {
	once sync.Once
	epfd int
	err  error

	mu    sync.Mutex
	byFD  map[int32]*Bridge
	spare []unix.EpollEvent
}

// hostPoller runs for the life of the process once the first bridge uses it, like the Go
// runtime's own poller.
var hostPoller idlePoller

func (p *idlePoller) start() error {
	p.once.Do(func() {
		p.epfd, p.err = unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if p.err != nil {
			return
		}
		p.byFD = make(map[int32]*Bridge)
		go p.run()
	})
	return p.err
}

func (p *idlePoller) run() {
	events := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			Logf("idle poller: %v", err)
			return
		}
		for _, ev := range events[:n] {
			p.mu.Lock()
			b := p.byFD[ev.Fd]
			p.mu.Unlock()
			// A stale event for a closed fd whose number was reused finds the new bridge
			// not armed (or armed, and then it merely reads EAGAIN and re-arms).
			if b != nil && b.armed.CompareAndSwap(true, false) {
				goPump(b.runHostPump)
			}
		}
	}
}

// startHostPump starts the host → tailnet direction; done is called when it has ended.
func (b *Bridge) startHostPump(done func()) {
	b.hostDone = done
	if hostPoller.start() != nil || b.localRC.Control(func(fd uintptr) { b.fd = int32(fd) }) != nil {
		goPump(b.runHostPumpNoIdle)
		return
	}
	hostPoller.mu.Lock()
	hostPoller.byFD[b.fd] = b
	hostPoller.mu.Unlock()
	b.polled = true
	b.arm(unix.EPOLL_CTL_ADD)
}

// arm hands the idle host end to the poller.
func (b *Bridge) arm(op int) {
	b.armed.Store(true)
	err := b.localRC.Control(func(fd uintptr) {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(fd)}
		if e := unix.EpollCtl(hostPoller.epfd, op, int(fd), &ev); e != nil {
			Logf("conn %d: idle poller: %v", b.id, e)
		}
	})
	if err != nil && b.armed.CompareAndSwap(true, false) {
		// Closed under us: the pump reads the error and ends.
		goPump(b.runHostPump)
	}
}

// disarm, called by abort after closing the host end (which removes it from the epoll
// set): if the pump was idle in the poller, nothing would ever wake it, so its end is
// reported here.
func (b *Bridge) disarm() {
	if b.armed.CompareAndSwap(true, false) {
		b.hostEnded()
	}
}

func (b *Bridge) hostEnded() {
	if b.polled {
		hostPoller.mu.Lock()
		if hostPoller.byFD[b.fd] == b {
			delete(hostPoller.byFD, b.fd)
		}
		hostPoller.mu.Unlock()
	}
	b.hostDone()
}

// runHostPump pumps until the host end is idle (then re-arms and returns) or has ended.
func (b *Bridge) runHostPump() {
	err := b.copyFromHostUntilIdle(hostIdleAfter)
	if errors.Is(err, errHostIdle) {
		b.arm(unix.EPOLL_CTL_MOD)
		return
	}
	b.finishHostPump(err)
	b.hostEnded()
}

func (b *Bridge) runHostPumpNoIdle() {
	b.finishHostPump(b.copyFromHost())
	b.hostEnded()
}

// copyFromHostUntilIdle is copyFromHost that gives up, with errHostIdle, once nothing has
// come for idle.
func (b *Bridge) copyFromHostUntilIdle(idle time.Duration) error {
	for {
		b.local.SetReadDeadline(time.Now().Add(idle))
		buf, n, err := b.readHost()
		if n > 0 {
			err = writeAll(b.tn, (*buf)[:n])
		}
		if buf != nil {
			largeBufs.Put(buf)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return errHostIdle
		}
		if err != nil || n == 0 {
			return err // n == 0 and no error: EOF
		}
	}
}

// bridgeIdleState is the bridge's part of the idle hand-over.
type bridgeIdleState struct {
	fd       int32
	polled   bool        // registered with hostPoller
	armed    atomic.Bool // idle in the poller: no pump goroutine
	hostDone func()
}
