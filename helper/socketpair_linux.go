package main

import "golang.org/x/sys/unix"

// socketpair returns a connected AF_UNIX stream pair, close-on-exec from birth so that no
// process tsnet might start inherits a connection.
func socketpair() (fds [2]int, err error) {
	return socketpairOf(unix.SOCK_STREAM)
}

// packetSocketType keeps datagram boundaries and, unlike SOCK_DGRAM, reports the peer's close
// (EOF on read, EPIPE on write), so a UDP relay ends when the host closes its end.
const packetSocketType = unix.SOCK_SEQPACKET

func socketpairOf(typ int) (fds [2]int, err error) {
	return unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
}
