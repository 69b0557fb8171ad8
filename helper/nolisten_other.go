//go:build !linux

package main

import "errors"

// forbidListen is Linux-only (seccomp). Elsewhere tsnet's peerAPI keeps the unused TCP
// listener it opens on all host interfaces; see nolisten_linux.go.
func forbidListen() error { return errors.ErrUnsupported }
