// Package bridge joins one tailnet connection to one AF_UNIX socketpair (docs/protocol.md §6):
// the helper keeps one end and pumps bytes both ways, the other end is handed to the host, so
// a connection's bytes never travel in RPC messages. It knows neither the control channel nor
// the node: the node hands each end over and sends conn_end when a Bridge says so. It also
// holds what the helper does to tsnet's connections (Reset, FunnelSource) and the socketpairs
// of the UDP relays (NewSocketpair).
package bridge

// Logf logs the package's rare troubles (the idle poller's). The helper sets it once, before
// the first bridge; it discards them until then.
var Logf = func(format string, args ...any) {}
