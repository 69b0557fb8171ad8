package parentwatch

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// Watch calls gone (once, from another goroutine) when the process that started the
// helper exits. On Linux it waits on a pidfd of the parent, falling back to polling.
func Watch(gone func(reason string)) {
	ppid := os.Getppid()
	// If the parent died before we got here we were re-parented, usually to pid 1. But a
	// host may itself be pid 1 (the main process of a container), so pid 1 only means
	// "parent gone" when the process that made the control channel is someone else.
	if ppid == 1 {
		if peer := channelPeerPID(); peer > 1 {
			gone("parent process exited before the helper started")
			return
		}
	}
	pidfd, err := unix.PidfdOpen(ppid, 0)
	if err != nil {
		// Kernels before 5.3, or a seccomp policy without pidfd_open.
		pollParent(ppid, gone)
		return
	}
	if os.Getppid() != ppid { // the parent exited between Getppid and PidfdOpen
		unix.Close(pidfd)
		gone("parent process exited before the helper started")
		return
	}
	go func() {
		defer unix.Close(pidfd)
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		for {
			// A pidfd becomes readable when its process exits.
			_, err := unix.Poll(fds, -1)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				pollParent(ppid, gone)
				return
			}
			gone("parent process exited")
			return
		}
	}()
}

// channelPeerPID is the pid of the process that created the control channel's socketpair
// (SO_PEERCRED on fd 0), or 0 if unknown.
func channelPeerPID() int {
	cred, err := unix.GetsockoptUcred(0, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return 0
	}
	return int(cred.Pid)
}
