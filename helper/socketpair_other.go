//go:build !linux

package main

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// socketpair returns a connected AF_UNIX stream pair, close-on-exec. Without SOCK_CLOEXEC
// the flag is set afterwards, under ForkLock so that no fork sees the fds in between.
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
