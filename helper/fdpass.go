package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"golang.org/x/sys/unix"
)

// File-descriptor passing on the control channel (docs/protocol.md §2).
//
// The kernel does not keep an fd next to the bytes it was sent with: one recvmsg may return
// a later frame's fd together with an earlier frame's bytes, or an fd before or after the
// bytes of its own frame. So fds go into a FIFO as they arrive, and each message that says
// "fd": true takes the oldest one, in message order. A message whose fd has not arrived yet
// waits, and every message behind it waits too.

const (
	// maxFDsPerRead is the ancillary room given to one recvmsg. More fds than that in one
	// read set MSG_CTRUNC, which is a protocol error.
	maxFDsPerRead = 64
	// maxUnclaimedFDs bounds the FIFO when no message is waiting to claim its fds.
	maxUnclaimedFDs = 64
	// maxBufferedWhileWaiting bounds the bytes held while a message waits for its fd. A
	// conforming sender passes the fd with the frame's first byte, so the wait is short and
	// the bytes behind it few; this only stops a broken peer from growing the buffer forever.
	maxBufferedWhileWaiting = 4 << 20
	// readChunk is how many bytes one recvmsg asks for.
	readChunk = 64 << 10
)

// fdInbox turns received bytes and fds into messages with their fds attached. It does no
// I/O, so every interleaving of bytes and fds can be tested directly.
type fdInbox struct {
	buf     []byte   // received bytes not yet decoded
	fds     []int    // received fds not yet claimed, oldest first
	waiting *message // decoded, says "fd": true, no fd in the FIFO yet
}

// push adds what one recvmsg returned.
func (in *fdInbox) push(data []byte, fds []int) {
	in.buf = append(in.buf, data...)
	in.fds = append(in.fds, fds...)
}

// next returns the next complete message with its fd attached, or nil if it needs more
// bytes or fds.
func (in *fdInbox) next() (*message, error) {
	if in.waiting == nil {
		if len(in.buf) < frameHeaderLen {
			return nil, nil
		}
		n := binary.BigEndian.Uint32(in.buf)
		if err := checkFrameLen(n); err != nil {
			return nil, err
		}
		end := frameHeaderLen + int(n)
		if len(in.buf) < end {
			return nil, nil
		}
		m, err := decodeBody(in.buf[frameHeaderLen:end])
		// Drop the frame's bytes by copying the rest down, so the backing array does not
		// keep every frame ever received alive.
		in.buf = in.buf[:copy(in.buf, in.buf[end:])]
		if err != nil {
			return nil, err
		}
		if !m.carriesFD() {
			return m, nil
		}
		in.waiting = m
	}
	if len(in.fds) == 0 {
		if len(in.buf) > maxBufferedWhileWaiting {
			return nil, protoErrorf("%d bytes buffered while a message waits for its fd", len(in.buf))
		}
		return nil, nil
	}
	m := in.waiting
	in.waiting = nil
	m.fd = in.fds[0]
	in.fds = in.fds[1:]
	return m, nil
}

// checkUnclaimed is called once next has returned every complete message: fds still in
// the FIFO then have no message to claim them.
func (in *fdInbox) checkUnclaimed() error {
	if len(in.fds) > maxUnclaimedFDs {
		return protoErrorf("%d fds received with no message to claim them", len(in.fds))
	}
	return nil
}

// eof reports whether the stream may end here: not inside a frame, and no message waiting
// for an fd.
func (in *fdInbox) eof() error {
	if in.waiting != nil {
		return protoErrorf("end of stream while a message waits for its fd")
	}
	if len(in.buf) > 0 {
		return protoErrorf("end of stream inside a frame (%d bytes left over)", len(in.buf))
	}
	return nil
}

// closeAll closes every fd still held. The inbox must not be used afterwards.
func (in *fdInbox) closeAll() {
	for _, fd := range in.fds {
		unix.Close(fd)
	}
	in.fds = nil
	in.buf = nil
	in.waiting = nil
}

// msgReader reads messages, with their fds, from the control channel.
type msgReader struct {
	conn *net.UnixConn
	in   fdInbox
	buf  []byte
	oob  []byte
	err  error // sticky: once set, every read returns it
}

func newMsgReader(conn *net.UnixConn) *msgReader {
	return &msgReader{
		conn: conn,
		buf:  make([]byte, readChunk),
		oob:  make([]byte, unix.CmsgSpace(maxFDsPerRead*4)),
	}
}

// read returns the next message. At a clean end of stream it returns io.EOF; any other
// error is final, and on any error every fd still held has been closed.
func (r *msgReader) read() (*message, error) {
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

func (r *msgReader) readOnce() (*message, error) {
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
