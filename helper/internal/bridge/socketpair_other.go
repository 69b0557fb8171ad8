//go:build !linux

package bridge

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// PacketSocketType: macOS has no AF_UNIX SOCK_SEQPACKET. SOCK_DGRAM keeps boundaries; the
// relay then also ends when the host sends close_conn or the node closes.
const PacketSocketType = unix.SOCK_DGRAM

// socketpairOf returns a connected AF_UNIX pair of type typ, close-on-exec. Without
// SOCK_CLOEXEC the flag is set afterwards, under ForkLock so that no fork sees the fds in
// between.
func socketpairOf(typ int) (fds [2]int, err error) {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	fds, err = unix.Socketpair(unix.AF_UNIX, typ, 0)
	if err != nil {
		return fds, err
	}
	unix.CloseOnExec(fds[0])
	unix.CloseOnExec(fds[1])
	return fds, nil
}
