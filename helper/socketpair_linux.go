package main

import "golang.org/x/sys/unix"

// socketpair returns a connected AF_UNIX stream pair, close-on-exec from birth so that no
// process tsnet might start inherits a connection.
func socketpair() (fds [2]int, err error) {
	return unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
}
