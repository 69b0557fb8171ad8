//go:build !linux

package main

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// socketpair returns a connected AF_UNIX stream pair, close-on-exec. Without SOCK_CLOEXEC
// the flag is set afterwards, under ForkLock so that no fork sees the fds in between.
func socketpair() (fds [2]int, err error) {
	return socketpairOf(unix.SOCK_STREAM)
}

// packetSocketType: macOS has no AF_UNIX SOCK_SEQPACKET. SOCK_DGRAM keeps boundaries; the
// relay then also ends when the host sends close_conn or the node closes.
const packetSocketType = unix.SOCK_DGRAM

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
