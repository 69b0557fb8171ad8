package bridge

import "golang.org/x/sys/unix"

// hostClosedFully reports, once the host → tailnet direction has read EOF, whether the host
// closed its end of the socketpair for good rather than half-closing it. On Linux an AF_UNIX
// stream socket polls POLLHUP exactly when both directions are shut down, and the peer's
// close shuts down both at once (unix_release_sock), so the EOF of a close always comes with
// it, while a shutdown(SHUT_WR) gives EOF without it. A closed host end is the host's
// close_conn said by the kernel (docs/protocol.md §6): the host sends none then.
func (b *Bridge) hostClosedFully() bool {
	hup := false
	b.localRC.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd)}}
		if n, err := unix.Poll(fds, 0); err == nil && n == 1 {
			hup = fds[0].Revents&unix.POLLHUP != 0
		}
	})
	return hup
}
