package main

import "golang.org/x/sys/unix"

// fdPeerUID reads the peer's credentials the kernel recorded at connect (SO_PEERCRED).
func fdPeerUID(fd int) (uint32, error) {
	cred, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return 0, err
	}
	return cred.Uid, nil
}
