package main

import (
	"github.com/tsproc/tsproc/helper/internal/bridge"
	"github.com/tsproc/tsproc/helper/internal/procs"
)

// adaptProcs runs the node on one P while its connections carry little and on the runtime's
// default while they carry bulk (internal/procs has the why and the figures), unless the
// user's environment sets GOMAXPROCS.
func adaptProcs() {
	if !procs.Enabled() {
		return
	}
	src := procs.Source{Activity: bridge.Activity, Woken: bridge.Woken()}
	go procs.Adapt(src, debugLogf)
}
