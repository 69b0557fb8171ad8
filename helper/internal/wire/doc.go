// Package wire is the helper's side of the control channel of docs/protocol.md: the frame
// codec, the fd inbox that pairs passed descriptors with their messages, the message reader
// and writer, the error codes, typed parameter reading, and the dispatcher that enforces the
// hello handshake and runs each request under an in-flight bound.
//
// It knows nothing of tsnet: what the requests do is a Service's business (the node mode of
// tsproc-helper). Messages can be intercepted by wrapping the Source the dispatcher reads and
// the Sender it writes to; nothing else here can be switched.
package wire
