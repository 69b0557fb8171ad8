//go:build !linux

package parentwatch

import "os"

// Watch calls gone (once, from another goroutine) when the process that started the
// helper exits.
func Watch(gone func(reason string)) {
	pollParent(os.Getppid(), gone)
}
