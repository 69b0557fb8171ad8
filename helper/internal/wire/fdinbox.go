package wire

import (
	"encoding/binary"

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
	waiting *Message // decoded, says "fd": true, no fd in the FIFO yet
}

// push adds what one recvmsg returned.
func (in *fdInbox) push(data []byte, fds []int) {
	in.buf = append(in.buf, data...)
	in.fds = append(in.fds, fds...)
}

// next returns the next complete message with its fd attached, or nil if it needs more
// bytes or fds.
func (in *fdInbox) next() (*Message, error) {
	if in.waiting == nil {
		if len(in.buf) < FrameHeaderLen {
			return nil, nil
		}
		n := binary.BigEndian.Uint32(in.buf)
		if err := checkFrameLen(n); err != nil {
			return nil, err
		}
		end := FrameHeaderLen + int(n)
		if len(in.buf) < end {
			return nil, nil
		}
		m, err := decodeBody(in.buf[FrameHeaderLen:end])
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
	m.FD = in.fds[0]
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
