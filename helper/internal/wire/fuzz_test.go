package wire

import (
	"bytes"
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tsproc/tsproc/helper/internal/fdtest"
)

// Fuzz targets for everything the host can make the helper read (docs/protocol.md §1, §2):
//
//   - FuzzDecode: the frame codec and the fd FIFO, with no I/O. The input bytes are cut into
//     reads, and fds arrive between them, the way recvmsg may hand them over.
//   - FuzzDispatch (in the node mode, package main): a whole node session on a socketpair.
//
// The seed corpus is in testdata/fuzz/<FuzzName>/ and runs with every `go test`; `make test`
// also fuzzes each target for a few seconds. After changing the seeds' generator below, write
// them again with
//
//	TSPROC_WRITE_FUZZ_CORPUS=1 go test -run TestWriteFuzzCorpus .  (here and in helper/)

// maxFuzzFDs bounds the fds one input may pass: each costs a pipe.
const maxFuzzFDs = 12

// FuzzDecode feeds data to an fdInbox in the reads that plan describes: each plan byte is one
// read of its low 6 bits' worth of bytes, with its top 2 bits' worth of fresh fds. Whatever is
// left of data after the plan is the last read. It also decodes data as a bare frame body.
func FuzzDecode(f *testing.F) {
	f.Fuzz(func(t *testing.T, data, plan []byte) {
		checkBody(t, data)

		var in fdInbox
		var pushed []int        // every fd pushed, oldest first
		var readEnds []*os.File // the pipes' read ends, to see the write ends closed
		handedOut := 0          // how many of pushed went to messages, in order
		defer func() {
			for _, r := range readEnds {
				r.Close()
			}
		}()

		var err error
		rest := data
		step := func(chunk []byte, nfds int) {
			var fds []int
			for range nfds {
				if len(pushed) == maxFuzzFDs {
					break
				}
				w, r := fdtest.PipeFD(t)
				fds = append(fds, w)
				pushed = append(pushed, w)
				readEnds = append(readEnds, r)
			}
			in.push(chunk, fds)
			for {
				var m *Message
				m, err = in.next()
				if err != nil || m == nil {
					break
				}
				if m.carriesFD() != (m.FD >= 0) {
					t.Fatalf("message %+v: says fd %v, has fd %d", m, m.carriesFD(), m.FD)
				}
				if m.FD >= 0 {
					// FIFO: the n-th message with an fd gets the n-th fd pushed.
					if handedOut >= len(pushed) || m.FD != pushed[handedOut] {
						t.Fatalf("message got fd %d, want the oldest unclaimed of %v (%d handed out)",
							m.FD, pushed, handedOut)
					}
					handedOut++
					unix.Close(m.FD)
				}
				checkRoundTrip(t, m)
			}
			if err == nil {
				err = in.checkUnclaimed()
			}
		}
		for _, p := range plan {
			if err != nil {
				break
			}
			n := min(int(p&0x3f), len(rest))
			step(rest[:n], int(p>>6))
			rest = rest[n:]
		}
		if err == nil {
			step(rest, 0)
		}
		if err == nil {
			err = in.eof()
		}
		if err != nil {
			if pe, ok := errors.AsType[*ProtocolError](err); !ok {
				t.Fatalf("error %v (%T) is not a protocol error", err, err)
			} else if pe.msg == "" {
				t.Fatal("protocol error without a message")
			}
		}
		in.closeAll()
		for i, r := range readEnds {
			if !fdtest.WriteEndClosed(t, r) {
				t.Fatalf("fd %d of %d is still open after closeAll", i, len(readEnds))
			}
		}
	})
}

// checkBody decodes body as a frame body: the result is a message or a protocol error.
func checkBody(t *testing.T, body []byte) {
	t.Helper()
	m, err := decodeBody(body)
	if err != nil {
		if _, ok := errors.AsType[*ProtocolError](err); !ok {
			t.Fatalf("decodeBody: %v (%T) is not a protocol error", err, err)
		}
		return
	}
	if m.FD != -1 {
		t.Fatalf("decodeBody attached fd %d", m.FD)
	}
	checkRoundTrip(t, m)
}

// checkRoundTrip checks that a decoded message is well-formed and that encoding is stable:
// decode(encode(m)) encodes to the same bytes as m.
func checkRoundTrip(t *testing.T, m *Message) {
	t.Helper()
	switch m.Kind {
	case KindRequest, KindNotification:
		if m.Params == nil {
			t.Fatalf("decoded %v with nil params", m.Kind)
		}
	case KindResponse:
		if (m.Err == nil) == (m.Result == nil) {
			t.Fatalf("decoded response with error %v and result %v", m.Err, m.Result)
		}
	}
	if m.Kind < KindRequest || m.Kind > KindNotification {
		t.Fatalf("decoded message of kind %d", m.Kind)
	}
	// The body was at most maxFrameBody; re-encoding may widen small floats and ints a
	// little, so an encoding error is only acceptable near the cap.
	fd := m.FD
	m.FD = -1
	defer func() { m.FD = fd }()
	first, err := EncodeFrame(m)
	if err != nil {
		return
	}
	again, err := decodeBody(first[FrameHeaderLen:])
	if err != nil {
		t.Fatalf("the helper's own encoding of %+v does not decode: %v", m, err)
	}
	second, err := EncodeFrame(again)
	if err != nil || !bytes.Equal(first, second) {
		t.Fatalf("encoding is not stable for %+v:\n%x\n%x (%v)", m, first, second, err)
	}
}
