package wire

import (
	"fmt"
	"net"
	"sync"

	"golang.org/x/sys/unix"
)

// Sender is where the dispatcher and the service write messages: a *MsgWriter, or a wrapper
// around one.
type Sender interface {
	// Send writes m, passing m.FD if it is >= 0. It takes ownership of m.FD and closes it
	// once the frame is written or has failed.
	Send(m *Message) error
}

// MsgWriter is the single writer of the control channel. Every frame goes out whole and
// alone, so frames never interleave and a frame's fd travels with its first byte.
type MsgWriter struct {
	mu   sync.Mutex
	conn *net.UnixConn
	err  error // the first write error; every later send fails with it
}

// NewMsgWriter returns the writer of conn.
func NewMsgWriter(conn *net.UnixConn) *MsgWriter { return &MsgWriter{conn: conn} }

// Send writes m, passing m.FD if it is >= 0. It takes ownership of m.FD and closes it once
// the frame is written or has failed: the host holds its own copy from then on.
func (w *MsgWriter) Send(m *Message) error {
	if m.FD >= 0 {
		defer unix.Close(m.FD)
	}
	frame, err := EncodeFrame(m)
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	if err := sendFrame(w.conn, frame, m.FD); err != nil {
		w.err = err
		return err
	}
	return nil
}

// Notify sends a notification through s; fd (or -1) as for Send.
func Notify(s Sender, method string, params map[string]any, fd int) error {
	m := NewNotification(method, params)
	m.FD = fd
	return s.Send(m)
}

// sendFrame writes one whole frame; if fd >= 0 it is passed with SCM_RIGHTS in the sendmsg
// that writes the frame's first byte. It does not close fd.
func sendFrame(conn *net.UnixConn, frame []byte, fd int) error {
	if fd < 0 {
		if _, err := conn.Write(frame); err != nil {
			return fmt.Errorf("writing frame: %w", err)
		}
		return nil
	}
	n, _, err := conn.WriteMsgUnix(frame, unix.UnixRights(fd), nil)
	if err != nil {
		return fmt.Errorf("sendmsg: %w", err)
	}
	// A stream socket may take only part of the frame. The fd went with the first byte;
	// the rest goes without ancillary data, or the receiver would see a second fd.
	if n < len(frame) {
		if _, err := conn.Write(frame[n:]); err != nil {
			return fmt.Errorf("writing rest of frame: %w", err)
		}
	}
	return nil
}
