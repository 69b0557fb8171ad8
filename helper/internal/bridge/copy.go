package bridge

import (
	"fmt"
	"io"
	"syscall"
)

// Copy copies src to dst until EOF (nil) or an error with the pump's adaptive buffers (a small
// one while little arrives, a pooled large one while data queues), as the tailnet → host pump
// does. The helper's forwards use it from a tailnet connection to a local socket.
func Copy(dst io.Writer, src io.Reader) error {
	pumpsStarted()
	defer pumpsEnded()
	return copyFromTailnet(dst, src)
}

// CopyFromLocal copies a kernel socket (a forward's accepted connection) to dst until EOF
// (nil) or an error, as the host → tailnet pump does: it waits for data holding no buffer and
// reads each time into a pooled large one, so a busy connection moves large chunks and an
// idle one holds nothing.
func CopyFromLocal(dst io.Writer, src syscall.Conn) error {
	rc, err := src.SyscallConn()
	if err != nil {
		return fmt.Errorf("local socket: %w", err)
	}
	pumpsStarted()
	defer pumpsEnded()
	for {
		buf, n, err := readPooled(rc)
		if n > 0 {
			err = writeAll(dst, (*buf)[:n])
		}
		if buf != nil {
			largeBufs.Put(buf)
		}
		if err != nil || n == 0 {
			return err // n == 0 and no error: EOF
		}
	}
}
