package wire

import (
	"errors"
	"io"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tsproc/tsproc/helper/internal/fdtest"
)

// encodedFrame encodes m or fails the test.
func encodedFrame(t *testing.T, m *Message) []byte {
	t.Helper()
	f, err := EncodeFrame(m)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestFDInboxOrdering(t *testing.T) {
	withFD := func(name string) []byte {
		return encodedFrame(t, NewNotification(name, map[string]any{"fd": true}))
	}
	plain := func(name string) []byte { return encodedFrame(t, NewNotification(name, nil)) }

	// A step pushes bytes and a number of fresh fds, then collects every message next
	// yields, as "name" or "name+fdN" (N: the index of the fd among all pushed so far).
	type step struct {
		data []byte
		fds  int
		want []string
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"fd with its bytes", []step{
			{withFD("a"), 1, []string{"a+fd0"}},
		}},
		{"fd before its bytes", []step{
			{nil, 1, nil},
			{withFD("a"), 0, []string{"a+fd0"}},
		}},
		{"fd after its bytes", []step{
			{withFD("a"), 0, nil},
			{nil, 1, []string{"a+fd0"}},
		}},
		{"fd in the middle of its frame", []step{
			{withFD("a")[:3], 0, nil},
			{withFD("a")[3:], 1, []string{"a+fd0"}},
		}},
		{"waiting message holds back later ones", []step{
			{append(withFD("a"), plain("b")...), 0, nil},
			{nil, 1, []string{"a+fd0", "b"}},
		}},
		{"fds are taken in message order", []step{
			{append(withFD("a"), withFD("b")...), 2, []string{"a+fd0", "b+fd1"}},
		}},
		{"a later frame's fd arrives with an earlier frame", []step{
			{append(plain("x"), withFD("a")[:2]...), 1, []string{"x"}},
			{withFD("a")[2:], 0, []string{"a+fd0"}},
		}},
		{"second fd waits for its own message", []step{
			{withFD("a"), 2, []string{"a+fd0"}},
			{withFD("b"), 0, []string{"b+fd1"}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var in fdInbox
			defer in.closeAll()
			var pushed []int
			for i, st := range tt.steps {
				var fds []int
				for range st.fds {
					w, r := fdtest.PipeFD(t)
					r.Close()
					fds = append(fds, w)
					pushed = append(pushed, w)
				}
				in.push(st.data, fds)
				var got []string
				for {
					m, err := in.next()
					if err != nil {
						t.Fatalf("step %d: %v", i, err)
					}
					if m == nil {
						break
					}
					s := m.Method
					if m.FD >= 0 {
						idx := -1
						for j, fd := range pushed {
							if fd == m.FD {
								idx = j
							}
						}
						s += "+fd" + string(rune('0'+idx))
						unix.Close(m.FD)
					}
					got = append(got, s)
				}
				if strings.Join(got, ",") != strings.Join(st.want, ",") {
					t.Fatalf("step %d: got %v, want %v", i, got, st.want)
				}
			}
			if err := in.eof(); err != nil {
				t.Errorf("eof after all steps: %v", err)
			}
		})
	}
}

func TestFDInboxErrors(t *testing.T) {
	withFD := encodedFrame(t, NewNotification("a", map[string]any{"fd": true}))
	plain := encodedFrame(t, NewNotification("b", nil))
	tests := []struct {
		name    string
		data    []byte
		fds     int
		check   func(in *fdInbox) error // after draining next
		wantErr string
	}{
		{"64 unclaimed fds are allowed", plain, 64, (*fdInbox).checkUnclaimed, ""},
		{"65 unclaimed fds", plain, 65, (*fdInbox).checkUnclaimed, "no message to claim"},
		{"eof with a message waiting for its fd", withFD, 0, (*fdInbox).eof, "waits for its fd"},
		{"eof inside a frame", plain[:5], 0, (*fdInbox).eof, "inside a frame"},
		{"clean eof", plain, 0, (*fdInbox).eof, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var in fdInbox
			var fds []int
			for range tt.fds {
				w, r := fdtest.PipeFD(t)
				r.Close()
				fds = append(fds, w)
			}
			in.push(tt.data, fds)
			for {
				m, err := in.next()
				if err != nil {
					t.Fatal(err)
				}
				if m == nil {
					break
				}
			}
			err := tt.check(&in)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			in.closeAll()
			for _, fd := range fds {
				if fdtest.FDIsOpen(fd) {
					t.Errorf("fd %d still open after closeAll", fd)
				}
			}
		})
	}
}

func TestSendFrameWithFD(t *testing.T) {
	helperEnd, hostEnd := fdtest.UnixPair(t)
	pw, pr := fdtest.PipeFD(t)
	defer pr.Close()

	m := NewNotification("accepted", map[string]any{"conn": uint64(1), "fd": true})
	m.FD = pw
	if err := NewMsgWriter(helperEnd).Send(m); err != nil {
		t.Fatal(err)
	}
	if fdtest.FDIsOpen(pw) {
		t.Error("the writer did not close the fd it passed")
	}

	got, err := NewMsgReader(hostEnd).Read()
	if err != nil {
		t.Fatal(err)
	}
	if got.Method != "accepted" || got.FD < 0 {
		t.Fatalf("got %+v", got)
	}
	flags, err := unix.FcntlInt(uintptr(got.FD), unix.F_GETFD, 0)
	if err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("received fd flags %#x, %v: want close-on-exec", flags, err)
	}
	// The received fd is the pipe's write end: what goes in comes out of the read end.
	if _, err := unix.Write(got.FD, []byte("through the fd")); err != nil {
		t.Fatal(err)
	}
	unix.Close(got.FD)
	b, err := io.ReadAll(pr)
	if err != nil || string(b) != "through the fd" {
		t.Fatalf("read %q, %v", b, err)
	}
}

// TestSendFrameLargeWithFD sends a frame bigger than the socket buffer, so sendmsg writes
// only part of it: the rest must follow without a second fd.
func TestSendFrameLargeWithFD(t *testing.T) {
	helperEnd, hostEnd := fdtest.UnixPair(t)
	raw, err := helperEnd.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	raw.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, 4096) })

	big := strings.Repeat("z", 900<<10)
	errc := make(chan error, 2)
	for i := range 2 {
		go func() {
			pw, pr := fdtest.PipeFD(t)
			pr.Close()
			m := NewResponse(uint32(i), map[string]any{"big": big, "fd": true}, nil)
			m.FD = pw
			errc <- NewMsgWriter(helperEnd).Send(m)
		}()
	}
	r := NewMsgReader(hostEnd)
	for range 2 {
		got, err := r.Read()
		if err != nil {
			t.Fatal(err)
		}
		if got.Result["big"] != big || got.FD < 0 {
			t.Fatalf("got a broken message (fd %d)", got.FD)
		}
		unix.Close(got.FD)
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	helperEnd.Close()
	if _, err := r.Read(); !errors.Is(err, io.EOF) {
		t.Fatalf("after both frames: %v, want EOF and no stray fd", err)
	}
	if len(r.in.fds) != 0 {
		t.Fatalf("%d stray fds", len(r.in.fds))
	}
}

func TestMsgReaderErrors(t *testing.T) {
	tests := []struct {
		name    string
		send    func(t *testing.T, c *fdtest.RawSender)
		wantErr string // "" means io.EOF
	}{
		{"clean end", func(t *testing.T, c *fdtest.RawSender) {
			c.Write(encodedFrame(t, NewNotification("a", nil)), 0)
		}, ""},
		{"end with a message waiting for its fd", func(t *testing.T, c *fdtest.RawSender) {
			c.Write(encodedFrame(t, NewNotification("a", map[string]any{"fd": true})), 0)
		}, "waits for its fd"},
		{"end inside a frame", func(t *testing.T, c *fdtest.RawSender) {
			c.Write(encodedFrame(t, NewNotification("a", nil))[:7], 0)
		}, "inside a frame"},
		{"more fds than ancillary room", func(t *testing.T, c *fdtest.RawSender) {
			c.Write([]byte{0}, maxFDsPerRead+1)
		}, "truncated"},
		{"too many unclaimed fds", func(t *testing.T, c *fdtest.RawSender) {
			for range 2 {
				c.Write(encodedFrame(t, NewNotification("a", nil)), 40)
			}
		}, "no message to claim"},
		{"oversized length", func(t *testing.T, c *fdtest.RawSender) {
			c.Write([]byte{0xff, 0xff, 0xff, 0xff, 1, 2, 3}, 1)
		}, "outside"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sender, receiver := fdtest.UnixPair(t)
			rs := &fdtest.RawSender{T: t, C: sender}
			tt.send(t, rs)
			sender.Close()

			r := NewMsgReader(receiver)
			var err error
			for err == nil {
				var m *Message
				m, err = r.Read()
				if m != nil && m.FD >= 0 {
					unix.Close(m.FD)
				}
			}
			if tt.wantErr == "" {
				if !errors.Is(err, io.EOF) {
					t.Fatalf("err = %v, want EOF", err)
				}
			} else if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			// Every fd that arrived was closed: by the reader, or by the kernel if it did not
			// fit.
			for i, r := range rs.ReadEnds {
				if !fdtest.WriteEndClosed(t, r) {
					t.Errorf("passed fd %d is still open in the receiver", i)
				}
			}
		})
	}
}
