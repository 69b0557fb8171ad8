package bridge

import (
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// NewSocketpair makes an AF_UNIX socketpair of type typ for one tailnet connection or UDP
// socket: the helper's end as a UnixConn in the runtime poller, and the host's end as a raw
// fd for the writer to pass. sndbuf, if not 0, is SO_SNDBUF on the helper's end (best effort:
// without it everything works, with smaller steps).
func NewSocketpair(typ int, name string, sndbuf int) (local *net.UnixConn, passFD int, err error) {
	fds, err := socketpairOf(typ)
	if err != nil {
		return nil, -1, fmt.Errorf("socketpair: %w", err)
	}
	if sndbuf > 0 {
		_ = unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUF, sndbuf)
	}
	f := os.NewFile(uintptr(fds[0]), name)
	c, err := net.FileConn(f) // dups the fd into the runtime poller
	f.Close()
	if err != nil {
		unix.Close(fds[1])
		return nil, -1, fmt.Errorf("socketpair end: %w", err)
	}
	return c.(*net.UnixConn), fds[1], nil
}
