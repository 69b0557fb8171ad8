//go:build !linux

package main

import "os"

// watchParent calls gone (once, from another goroutine) when the process that started the
// helper exits.
func watchParent(gone func(reason string)) {
	pollParent(os.Getppid(), gone)
}
