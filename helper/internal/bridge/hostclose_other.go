//go:build !linux

package bridge

// hostClosedFully: elsewhere POLLHUP on an AF_UNIX stream is not known to mean a full close
// only, so the host says it with close_conn (docs/protocol.md §6).
func (b *Bridge) hostClosedFully() bool { return false }
