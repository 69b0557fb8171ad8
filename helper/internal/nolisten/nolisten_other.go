//go:build !linux

package nolisten

import "errors"

// Forbid is Linux-only (seccomp). Elsewhere tsnet's peerAPI keeps the unused TCP
// listener it opens on all host interfaces; see nolisten_linux.go.
func Forbid() error { return errors.ErrUnsupported }
