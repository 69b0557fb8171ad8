// Package fdtest has file-descriptor test doubles: socketpairs and pipes as raw fds, a sender
// that passes any number of fds with any bytes, and checks of who closed what.
package fdtest

import (
	"net"
	"os"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// UnixPair returns the two ends of an AF_UNIX stream socketpair, closed at test end.
func UnixPair(t testing.TB) (a, b *net.UnixConn) {
	t.Helper()
	fds, err := socketpair()
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	a, b = FDConn(t, fds[0]), FDConn(t, fds[1])
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// FDConn turns fd (an AF_UNIX stream socket) into a UnixConn, taking ownership of fd.
func FDConn(t testing.TB, fd int) *net.UnixConn {
	t.Helper()
	f := os.NewFile(uintptr(fd), "test-socket")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		t.Fatalf("FileConn: %v", err)
	}
	return c.(*net.UnixConn)
}

// PipeFD returns the write end of a fresh pipe as a raw fd, and the read end as a file.
// Neither is closed automatically: tests check who closes what.
func PipeFD(t testing.TB) (w int, r *os.File) {
	t.Helper()
	p, err := NewPipe()
	if err != nil {
		t.Fatalf("pipe: %v", err)
	}
	return p[1], os.NewFile(uintptr(p[0]), "pipe-read")
}

// NewPipe returns a close-on-exec pipe as raw fds: read end, write end.
func NewPipe() (p [2]int, err error) {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	if err := unix.Pipe(p[:]); err != nil {
		return p, err
	}
	unix.CloseOnExec(p[0])
	unix.CloseOnExec(p[1])
	return p, nil
}

// FDIsOpen reports whether fd is an open descriptor in this process.
func FDIsOpen(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == nil
}

// RawSender writes bytes with any number of fds, bypassing the protocol's rules.
type RawSender struct {
	T        *testing.T
	C        *net.UnixConn
	ReadEnds []*os.File // the read ends of the pipes whose write ends were passed
}

// Write sends data with nfds fresh pipe write ends, and closes its own copies.
func (s *RawSender) Write(data []byte, nfds int) {
	s.T.Helper()
	var fds []int
	for range nfds {
		w, r := PipeFD(s.T)
		fds = append(fds, w)
		s.T.Cleanup(func() { r.Close() })
		s.ReadEnds = append(s.ReadEnds, r)
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := s.C.WriteMsgUnix(data, oob, nil); err != nil {
		s.T.Fatal(err)
	}
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// WriteEndClosed reports whether every copy of the pipe's write end is closed: a
// non-blocking read of the read end then sees EOF instead of EAGAIN.
func WriteEndClosed(t *testing.T, r *os.File) bool {
	t.Helper()
	fd := int(r.Fd())
	if err := unix.SetNonblock(fd, true); err != nil {
		t.Fatal(err)
	}
	n, err := unix.Read(fd, make([]byte, 1))
	return n == 0 && err == nil
}

// socketpair returns a connected AF_UNIX stream pair, close-on-exec.
func socketpair() (fds [2]int, err error) {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	fds, err = unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		return fds, err
	}
	unix.CloseOnExec(fds[0])
	unix.CloseOnExec(fds[1])
	return fds, nil
}
