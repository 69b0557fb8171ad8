package main

import "golang.org/x/sys/unix"

// fdPeerUID reads the peer's credentials the kernel recorded at connect (LOCAL_PEERCRED).
func fdPeerUID(fd int) (uint32, error) {
	cred, err := unix.GetsockoptXucred(fd, unix.SOL_LOCAL, unix.LOCAL_PEERCRED)
	if err != nil {
		return 0, err
	}
	return cred.Uid, nil
}
