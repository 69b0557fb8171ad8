//go:build linux || darwin

package main

import "net"

// peerUID is the uid of the process at the other end of a Unix-socket connection, as the
// kernel recorded it at connect: not something the peer can claim. How to ask the kernel is
// the one OS-specific part (fdPeerUID).
func peerUID(c *net.UnixConn) (uint32, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var uid uint32
	var uidErr error
	if err := raw.Control(func(fd uintptr) {
		uid, uidErr = fdPeerUID(int(fd))
	}); err != nil {
		return 0, err
	}
	return uid, uidErr
}
