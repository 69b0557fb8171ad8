package bridge

import "io"

// Copy copies src to dst until EOF (nil) or an error with the pump's adaptive buffers (a small
// one while little arrives, a pooled large one while data queues). The helper's forwards use it
// between a local socket and a tailnet connection, where there is no socketpair and no host.
func Copy(dst io.Writer, src io.Reader) error { return copyFromTailnet(dst, src) }
