package bridge

import "golang.org/x/sys/unix"

// PacketSocketType keeps datagram boundaries and, unlike SOCK_DGRAM, reports the peer's close
// (EOF on read, EPIPE on write), so a UDP relay ends when the host closes its end.
const PacketSocketType = unix.SOCK_SEQPACKET

// socketpairOf returns a connected AF_UNIX pair of type typ, close-on-exec so that no process
// tsnet might start inherits a connection.
func socketpairOf(typ int) (fds [2]int, err error) {
	return unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
}
