package wire

import (
	"errors"
	"fmt"
	"io"
	"net"

	"golang.org/x/sys/unix"
)

// MsgReader reads messages, with their fds, from the control channel.
type MsgReader struct {
	conn *net.UnixConn
	in   fdInbox
	buf  []byte
	oob  []byte
	err  error // sticky: once set, every read returns it
}

// NewMsgReader returns a reader of conn.
func NewMsgReader(conn *net.UnixConn) *MsgReader {
	return &MsgReader{
		conn: conn,
		buf:  make([]byte, readChunk),
		oob:  make([]byte, unix.CmsgSpace(maxFDsPerRead*4)),
	}
}

// Read returns the next message. At a clean end of stream it returns io.EOF; any other
// error is final, and on any error every fd still held has been closed.
func (r *MsgReader) Read() (*Message, error) {
	if r.err != nil {
		return nil, r.err
	}
	m, err := r.readOnce()
	if err != nil {
		r.err = err
		r.in.closeAll()
	}
	return m, err
}

func (r *MsgReader) readOnce() (*Message, error) {
	for {
		m, err := r.in.next()
		if err != nil || m != nil {
			return m, err
		}
		if err := r.in.checkUnclaimed(); err != nil {
			return nil, err
		}
		// net.UnixConn passes MSG_CMSG_CLOEXEC on Linux (and sets close-on-exec itself
		// elsewhere), so no received fd can leak into a process tsnet might start.
		n, oobn, flags, _, err := r.conn.ReadMsgUnix(r.buf, r.oob)
		n, oobn = max(n, 0), max(oobn, 0) // a failed read may report -1
		fds, perr := parseRights(r.oob[:oobn])
		r.in.push(r.buf[:n], fds) // even on error: the inbox closes them
		if flags&unix.MSG_CTRUNC != 0 {
			return nil, protoErrorf("ancillary data truncated (more than %d fds in one read)", maxFDsPerRead)
		}
		if perr != nil {
			return nil, protoErrorf("bad ancillary data: %v", perr)
		}
		if errors.Is(err, io.EOF) || (err == nil && n == 0) {
			if err := r.in.eof(); err != nil {
				return nil, err
			}
			return nil, io.EOF
		}
		if err != nil {
			return nil, fmt.Errorf("reading control channel: %w", err)
		}
	}
}

// parseRights returns every fd in SCM_RIGHTS control messages of oob. Other control
// messages are ignored.
func parseRights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	cmsgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	for i := range cmsgs {
		if cmsgs[i].Header.Level != unix.SOL_SOCKET || cmsgs[i].Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&cmsgs[i])
		if err != nil {
			return fds, err
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

// CloseFDs closes every fd received but not yet claimed by a message. The reader must not be
// used afterwards.
func (r *MsgReader) CloseFDs() { r.in.closeAll() }
