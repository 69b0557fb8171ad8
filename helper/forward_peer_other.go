//go:build !linux && !darwin

package main

import (
	"errors"
	"net"
)

// peerUID cannot tell who connected on this system, so every connection is refused.
func peerUID(*net.UnixConn) (uint32, error) {
	return 0, errors.ErrUnsupported
}
