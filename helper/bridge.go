package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// A bridge joins one tailnet connection to one AF_UNIX socketpair (docs/protocol.md §6). The
// helper keeps one end and pumps bytes both ways; the other end is handed to the host, so
// bytes never travel in RPC messages.

// pumpBufSize is each pump's copy buffer, held for the life of the connection: two per
// connection, so it is kept at io.Copy's default rather than larger.
const pumpBufSize = 32 << 10

// connEndFunc reports the end of the tailnet → host direction on the control channel. The
// bridge calls it before it shuts down the write side of its socketpair end, so the host has
// the verdict before it can read EOF.
type connEndFunc func(id uint64, clean bool, err error)

type bridge struct {
	id     uint64
	tn     net.Conn      // the tailnet connection
	local  *net.UnixConn // the helper's end of the socketpair
	passFD int           // the host's end, until handed to the writer (which closes it)
	onEnd  connEndFunc
	abortO sync.Once

	// hostGone is set by close_conn: the host closed its end for good. forwarded is set once
	// everything the host wrote has reached the tailnet connection. When both hold, the
	// tailnet connection is closed fully, as closing a TCP socket would (see hostClosed).
	hostGone  atomic.Bool
	forwarded atomic.Bool
}

// newBridge makes the socketpair for tn. Until start is called nothing is pumped; the caller
// hands passFD to the host and then calls start, or abort if the hand-over failed.
func newBridge(id uint64, tn net.Conn, onEnd connEndFunc) (*bridge, error) {
	fds, err := socketpair()
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	f := os.NewFile(uintptr(fds[0]), "tsproc-conn")
	c, err := net.FileConn(f) // dups the fd into the runtime poller
	f.Close()
	if err != nil {
		unix.Close(fds[1])
		return nil, fmt.Errorf("socketpair end: %w", err)
	}
	return &bridge{
		id:     id,
		tn:     tn,
		local:  c.(*net.UnixConn),
		passFD: fds[1],
		onEnd:  onEnd,
	}, nil
}

// start runs the two pumps in goroutines the bridge owns. When both have ended it closes
// both sides and calls finished.
func (b *bridge) start(finished func()) {
	var wg sync.WaitGroup
	wg.Go(b.pumpToHost)
	wg.Go(b.pumpToTailnet)
	go func() {
		wg.Wait()
		b.abort()
		finished()
	}()
}

// pumpToHost copies tailnet → host. An orderly EOF from the tailnet peer is reported as a
// clean end, and only then does the host's end see EOF; anything else is reported unclean
// and tears the bridge down, so a truncated transfer never looks complete.
func (b *bridge) pumpToHost() {
	_, err := io.CopyBuffer(writerOnly{b.local}, readerOnly{b.tn}, make([]byte, pumpBufSize))
	if err == nil {
		b.onEnd(b.id, true, nil)
		if err := b.local.CloseWrite(); err != nil {
			b.abort()
		}
		return
	}
	b.onEnd(b.id, false, err)
	b.abort()
}

// pumpToTailnet copies host → tailnet. EOF from the host (the application half-closed) is
// passed on as a half-close of the tailnet connection.
func (b *bridge) pumpToTailnet() {
	_, err := io.CopyBuffer(writerOnly{b.tn}, readerOnly{b.local}, make([]byte, pumpBufSize))
	if err == nil {
		if cw, ok := b.tn.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
			b.forwarded.Store(true)
			if b.hostGone.Load() {
				b.abort()
			}
			return
		}
	}
	b.abort()
}

// hostClosed handles close_conn: the application closed its stream before the tailnet side
// ended. Bytes it wrote before closing are still forwarded (the host → tailnet pump reads them
// up to EOF); then the tailnet connection is closed for good instead of waiting, half-closed,
// for a peer that may never speak again. The two atomics make sure that whichever of this and
// the pump's end comes last does the closing.
func (b *bridge) hostClosed() {
	b.hostGone.Store(true)
	if b.forwarded.Load() {
		b.abort()
	}
}

// abort closes both sides, which ends both pumps. It is safe to call more than once and
// before start (when the hand-over failed); then the host's end is closed as well.
func (b *bridge) abort() {
	b.abortO.Do(func() {
		b.tn.Close()
		b.local.Close()
	})
}

// closePassFD closes the host's end if it was never handed over.
func (b *bridge) closePassFD() {
	if b.passFD >= 0 {
		unix.Close(b.passFD)
		b.passFD = -1
	}
}

// takePassFD hands the host's end to the caller, who must see to its closing.
func (b *bridge) takePassFD() int {
	fd := b.passFD
	b.passFD = -1
	return fd
}

// endError describes a pump error for conn_end.
func endError(err error) string {
	if errors.Is(err, net.ErrClosed) {
		return "connection closed by the helper"
	}
	return err.Error()
}

// readerOnly and writerOnly hide ReadFrom/WriteTo so that io.CopyBuffer really uses the
// buffer and reports which side ended: a splice fast path would blur EOF and error.
type readerOnly struct{ r io.Reader }

func (r readerOnly) Read(p []byte) (int, error) { return r.r.Read(p) }

type writerOnly struct{ w io.Writer }

func (w writerOnly) Write(p []byte) (int, error) { return w.w.Write(p) }
