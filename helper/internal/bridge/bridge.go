package bridge

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// A Bridge joins one tailnet connection to one AF_UNIX socketpair (docs/protocol.md §6). The
// helper keeps one end and pumps bytes both ways; the other end is handed to the host, so
// bytes never travel in RPC messages.

// Pump buffers. A connection that carries nothing should cost little, because a node may
// hold thousands (benchmarks/README.md measures 1,000 idle ones), while a busy one should move
// large chunks, because every chunk is a syscall and a wake-up on each side.
//
//   - host → tailnet waits for the socketpair to become readable holding no buffer at all
//     (readHost), then reads into a large buffer from a pool and gives it back once written.
//   - tailnet → host blocks in the tailnet connection's Read, which cannot be asked whether
//     data is waiting, with a small buffer of its own; a read that fills it is followed by
//     reads into a pooled large buffer until one leaves it part empty (the queue is
//     drained), and then the large buffer goes back to the pool.
const (
	pumpSmallBufSize = 2 << 10
	pumpLargeBufSize = 256 << 10
	// hostSendBuf is SO_SNDBUF on the helper's end: how much tailnet → host data may wait in
	// the socketpair for the host to read (the kernel doubles it, and caps it at
	// net.core.wmem_max). The host sets the same on its end (tsproc/_streams.py).
	hostSendBuf = 1 << 20
)

var largeBufs = sync.Pool{New: func() any { b := make([]byte, pumpLargeBufSize); return &b }}

// connEndFunc reports the end of the tailnet → host direction on the control channel. The
// bridge calls it before it shuts down the write side of its socketpair end, so the host has
// the verdict before it can read EOF.
type connEndFunc func(id uint64, clean bool, err error)

type Bridge struct {
	id     uint64
	tn     net.Conn      // the tailnet connection
	local  *net.UnixConn // the helper's end of the socketpair
	passFD int           // the host's end, until handed to the writer (which closes it)
	onEnd  connEndFunc
	abortO sync.Once

	localRC syscall.RawConn // local's fd, to wait for data without holding a buffer
	pumps   atomic.Int32    // pumps still running; the last one to end finishes the bridge

	// hostGone is set by close_conn: the host closed its end for good (or keeps it only
	// until its reset is done) and expects no conn_end. forwarded is set once
	// everything the host wrote has reached the tailnet connection. When both hold, the
	// tailnet connection is closed fully, as closing a TCP socket would (see HostClosed).
	hostGone  atomic.Bool
	forwarded atomic.Bool

	bridgeIdleState // the host → tailnet pump's idle hand-over (idle_*.go)
}

// New makes the socketpair for tn, the tailnet connection with the helper-wide id. Until Start
// is called nothing is pumped; the caller hands TakePassFD to the host and then calls Start,
// or Abort if the hand-over failed. onEnd is called once the tailnet → host direction ends,
// unless the host let the connection go first (HostClosed, HostReset).
func New(id uint64, tn net.Conn, onEnd connEndFunc) (*Bridge, error) {
	local, passFD, err := NewSocketpair(unix.SOCK_STREAM, "tsproc-conn", hostSendBuf)
	if err != nil {
		return nil, err
	}
	rc, err := local.SyscallConn()
	if err != nil {
		local.Close()
		unix.Close(passFD)
		return nil, fmt.Errorf("socketpair end: %w", err)
	}
	return &Bridge{
		id:      id,
		tn:      tn,
		local:   local,
		localRC: rc,
		passFD:  passFD,
		onEnd:   onEnd,
	}, nil
}

// Start runs the two pumps in goroutines the bridge owns. When both have ended it closes
// both sides and calls finished (from the pump that ended last: no third goroutine waits).
func (b *Bridge) Start(finished func()) {
	b.pumps.Store(2)
	pumpsStarted()
	done := func() {
		if b.pumps.Add(-1) == 0 {
			b.finish() // a no-op if a pump has already aborted
			pumpsEnded()
			finished()
		}
	}
	go func() {
		defer done()
		b.pumpToHost()
	}()
	b.startHostPump(done)
}

// pumpToHost copies tailnet → host. An orderly EOF from the tailnet peer is reported as a
// clean end, and only then does the host's end see EOF; anything else is reported unclean
// and tears the bridge down, so a truncated transfer never looks complete.
func (b *Bridge) pumpToHost() {
	err := copyFromTailnet(b.local, b.tn)
	if err == nil {
		b.reportEnd(true, nil)
		if err := b.local.CloseWrite(); err != nil {
			b.Abort()
		}
		return
	}
	b.reportEnd(false, err)
	b.Abort()
}

// reportEnd calls onEnd, unless the host has already let the connection go (close_conn,
// with or without reset): it has forgotten the conn and nobody reads its end, so the word
// would be a control message, and a wake-up of the host, for nothing (docs/protocol.md §6).
func (b *Bridge) reportEnd(clean bool, err error) {
	if !b.hostGone.Load() {
		b.onEnd(b.id, clean, err)
	}
}

// finishHostPump ends the host → tailnet direction once its copy has returned err. EOF from
// the host is passed on as a half-close of the tailnet connection when the application
// half-closed, and as a close when it closed its end (hostClosedFully).
func (b *Bridge) finishHostPump(err error) {
	if err != nil {
		b.Abort()
		return
	}
	if b.hostClosedFully() {
		// Closed, not half-closed: as close_conn (HostClosed), everything it wrote has
		// been forwarded, so the tailnet connection closes in order now.
		b.hostGone.Store(true)
		b.finish()
		return
	}
	cw, ok := b.tn.(interface{ CloseWrite() error })
	if !ok {
		b.finish() // cannot half-close it; everything the host sent has been written
		return
	}
	if cw.CloseWrite() != nil {
		b.Abort()
		return
	}
	b.forwarded.Store(true)
	if b.hostGone.Load() {
		b.finish()
	}
}

// HostClosed handles close_conn: the application closed its stream before the tailnet side
// ended. Bytes it wrote before closing are still forwarded (the host → tailnet pump reads them
// up to EOF); then the tailnet connection is closed for good instead of waiting, half-closed,
// for a peer that may never speak again. The two atomics make sure that whichever of this and
// the pump's end comes last does the closing.
func (b *Bridge) HostClosed() {
	b.hostGone.Store(true)
	if b.forwarded.Load() {
		b.finish()
	}
}

// HostReset handles close_conn with reset: the application dropped the connection (a proxy
// whose backend refused it, say) and the tailnet peer must read a reset, not an EOF.
// Whatever the host wrote and the pump has not yet forwarded is discarded, as a kernel
// socket's RST discards its send queue. The host keeps its end open until the conn_reset
// that follows, so the host → tailnet pump cannot read EOF and half-close first.
func (b *Bridge) HostReset() {
	b.hostGone.Store(true)
	b.Abort()
}

// Abort ends the bridge abortively: both sides closed, and the tailnet connection reset
// (Reset), so that a peer never reads a cut-off transfer as complete. It is how every
// end that is not an orderly one goes: a pump's error, a hand-over that failed, the helper
// shutting down. It is safe to call more than once, and before start (when the hand-over
// failed; then the host's end is closed as well).
func (b *Bridge) Abort() { b.end(true) }

// finish closes both sides in order (the tailnet peer reads EOF): both directions have
// ended, or the host closed and everything it wrote has been forwarded. After Abort it does
// nothing.
func (b *Bridge) finish() { b.end(false) }

func (b *Bridge) end(reset bool) {
	b.abortO.Do(func() {
		if reset {
			Reset(b.tn)
		} else {
			b.tn.Close()
		}
		b.local.Close()
	})
	// Outside the Once: an idle host pump's end is reported from here, and the last end
	// calls it again.
	b.disarm()
}

// ID is the connection's id, unique for the helper process's lifetime (docs/protocol.md §6).
func (b *Bridge) ID() uint64 { return b.id }

// ClosePassFD closes the host's end if it was never handed over.
func (b *Bridge) ClosePassFD() {
	if b.passFD >= 0 {
		unix.Close(b.passFD)
		b.passFD = -1
	}
}

// TakePassFD hands the host's end to the caller, who must see to its closing.
func (b *Bridge) TakePassFD() int {
	fd := b.passFD
	b.passFD = -1
	return fd
}

// EndError describes a pump error for conn_end.
func EndError(err error) string {
	if errors.Is(err, net.ErrClosed) {
		return "connection closed by the helper"
	}
	return err.Error()
}

// copyFromTailnet copies src to dst until EOF (nil) or an error, with the buffers described
// at the top of this file. Every byte read is written before the next read, so nothing waits
// in the helper for more data to arrive.
func copyFromTailnet(dst io.Writer, src io.Reader) error {
	small := make([]byte, pumpSmallBufSize)
	for {
		n, err := src.Read(small)
		if werr := writeAll(dst, small[:n]); werr != nil {
			return werr
		}
		if err != nil {
			return eofIsNil(err)
		}
		if n < len(small) {
			continue
		}
		large := largeBufs.Get().(*[]byte)
		for full := true; full; full = n == len(*large) {
			if n, err = src.Read(*large); n == len(*large) {
				fullReads.Add(1)
			}
			if werr := writeAll(dst, (*large)[:n]); werr != nil {
				largeBufs.Put(large)
				return werr
			}
			if err != nil {
				largeBufs.Put(large)
				return eofIsNil(err)
			}
		}
		largeBufs.Put(large)
	}
}

// copyFromHost copies the socketpair to the tailnet connection until EOF (nil) or an error,
// holding a buffer only while there is data to move.
func (b *Bridge) copyFromHost() error {
	for {
		buf, n, err := b.readHost()
		if n > 0 {
			err = writeAll(b.tn, (*buf)[:n])
		}
		if buf != nil {
			largeBufs.Put(buf)
		}
		if err != nil || n == 0 {
			return err // n == 0 and no error: EOF
		}
	}
}

// readHost waits until the socketpair is readable, then reads into a pooled buffer. It
// returns the buffer (nil when none is held), the count (0 at EOF) and an error.
func (b *Bridge) readHost() (buf *[]byte, n int, err error) { return readPooled(b.localRC) }

// readPooled waits until rc is readable holding no buffer, then reads into a pooled large
// one. It returns the buffer (nil when none is held), the count (0 at EOF) and an error.
func readPooled(rc syscall.RawConn) (buf *[]byte, n int, err error) {
	rerr := rc.Read(func(fd uintptr) bool {
		if buf == nil {
			buf = largeBufs.Get().(*[]byte)
		}
		for {
			n, err = unix.Read(int(fd), *buf)
			if err != unix.EINTR {
				break
			}
		}
		if err == unix.EAGAIN {
			// Nothing yet: park without a buffer until the poller says readable.
			largeBufs.Put(buf)
			buf, err = nil, nil
			return false
		}
		return true
	})
	if n < 0 {
		n = 0
	} else if buf != nil && n == len(*buf) {
		fullReads.Add(1)
	}
	switch {
	case err != nil:
		err = os.NewSyscallError("read", err)
	case rerr != nil:
		err = rerr // closed by abort: net.ErrClosed
	}
	return buf, n, err
}

func writeAll(w io.Writer, p []byte) error {
	if len(p) == 0 {
		return nil
	}
	n, err := w.Write(p)
	moved.Add(uint64(max(n, 0)))
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	return err
}

func eofIsNil(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}
