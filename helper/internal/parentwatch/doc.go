// Package parentwatch tells the helper when the process that started it is gone. The helper
// must not outlive the host (docs/protocol.md §11): EOF on the control channel is the main
// signal, Watch the second one, for a host that died while something else still holds its end
// of the channel.
//
// It deliberately does not use PR_SET_PDEATHSIG: that signal fires when the *thread* that
// forked the helper exits, not the process, and trio starts processes from a worker thread
// that exits after ten idle seconds, so the helper would be killed under a live host.
package parentwatch
