package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
	"golang.org/x/sys/unix"

	"github.com/tsproc/tsproc/helper/internal/fdtest"
)

// mp marshals v with the msgpack library, for building test bodies.
func mp(t *testing.T, v any) []byte {
	t.Helper()
	b, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// frameOf prefixes body with its length.
func frameOf(body []byte) []byte {
	f := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
	return append(f, body...)
}

func TestDecodeBody(t *testing.T) {
	tests := []struct {
		name    string
		body    func(t *testing.T) []byte
		wantErr string // substring of the protocol error; "" for success
		check   func(t *testing.T, m *Message)
	}{
		{
			name: "request",
			body: func(t *testing.T) []byte { return mp(t, []any{0, 7, "ping", map[string]any{}}) },
			check: func(t *testing.T, m *Message) {
				if m.Kind != KindRequest || m.ID != 7 || m.Method != "ping" || len(m.Params) != 0 || m.FD != -1 {
					t.Errorf("got %+v", m)
				}
			},
		},
		{
			name: "notification",
			body: func(t *testing.T) []byte {
				return mp(t, []any{2, "grant", map[string]any{"listener": 3, "n": 2}})
			},
			check: func(t *testing.T, m *Message) {
				if m.Kind != KindNotification || m.Method != "grant" {
					t.Errorf("got %+v", m)
				}
				if n, _ := AsUint(m.Params["n"]); n != 2 {
					t.Errorf("n = %#v", m.Params["n"])
				}
			},
		},
		{
			name: "response result",
			body: func(t *testing.T) []byte { return mp(t, []any{1, 4294967295, nil, map[string]any{"fd": true}}) },
			check: func(t *testing.T, m *Message) {
				if m.Kind != KindResponse || m.ID != 4294967295 || m.Err != nil || !m.carriesFD() {
					t.Errorf("got %+v", m)
				}
			},
		},
		{
			name: "response error",
			body: func(t *testing.T) []byte {
				return mp(t, []any{1, 1, map[string]any{"code": "limit", "message": "x"}, nil})
			},
			check: func(t *testing.T, m *Message) {
				if m.Err == nil || m.Err.Code != "limit" || m.Result != nil {
					t.Errorf("got %+v", m)
				}
			},
		},
		{
			name: "unknown params keys kept",
			body: func(t *testing.T) []byte {
				return mp(t, []any{0, 1, "x", map[string]any{"future": []any{1, "a", nil, 1.5, map[string]any{}}}})
			},
		},
		{name: "map body", body: func(t *testing.T) []byte { return mp(t, map[string]any{"a": 1}) }, wantErr: "not an array"},
		{name: "integer body", body: func(t *testing.T) []byte { return mp(t, 5) }, wantErr: "not an array"},
		{name: "empty array", body: func(t *testing.T) []byte { return mp(t, []any{}) }, wantErr: "empty"},
		{name: "kind 3", body: func(t *testing.T) []byte { return mp(t, []any{3, "x", map[string]any{}}) }, wantErr: "kind"},
		{name: "kind negative", body: func(t *testing.T) []byte { return mp(t, []any{-1, "x", map[string]any{}}) }, wantErr: "kind"},
		{name: "kind string", body: func(t *testing.T) []byte { return mp(t, []any{"0", 1, "x", map[string]any{}}) }, wantErr: "kind"},
		{name: "request too short", body: func(t *testing.T) []byte { return mp(t, []any{0, 1, "x"}) }, wantErr: "4"},
		{name: "notification too long", body: func(t *testing.T) []byte { return mp(t, []any{2, "x", map[string]any{}, 1}) }, wantErr: "3"},
		{name: "negative id", body: func(t *testing.T) []byte { return mp(t, []any{0, -1, "x", map[string]any{}}) }, wantErr: "id"},
		{name: "id 2^32", body: func(t *testing.T) []byte { return mp(t, []any{0, uint64(1) << 32, "x", map[string]any{}}) }, wantErr: "id"},
		{name: "id string", body: func(t *testing.T) []byte { return mp(t, []any{0, "1", "x", map[string]any{}}) }, wantErr: "id"},
		{name: "method integer", body: func(t *testing.T) []byte { return mp(t, []any{0, 1, 5, map[string]any{}}) }, wantErr: "method"},
		{name: "method bin", body: func(t *testing.T) []byte { return mp(t, []any{0, 1, []byte("ping"), map[string]any{}}) }, wantErr: "method"},
		{name: "params nil", body: func(t *testing.T) []byte { return mp(t, []any{0, 1, "x", nil}) }, wantErr: "params"},
		{name: "params list", body: func(t *testing.T) []byte { return mp(t, []any{0, 1, "x", []any{}}) }, wantErr: "params"},
		{name: "result nil without error", body: func(t *testing.T) []byte { return mp(t, []any{1, 1, nil, nil}) }, wantErr: "result"},
		{
			name: "error and result",
			body: func(t *testing.T) []byte {
				return mp(t, []any{1, 1, map[string]any{"code": "a", "message": "b"}, map[string]any{}})
			},
			wantErr: "both",
		},
		{name: "error not a map", body: func(t *testing.T) []byte { return mp(t, []any{1, 1, "bad", nil}) }, wantErr: "error"},
		{
			name:    "error without message",
			body:    func(t *testing.T) []byte { return mp(t, []any{1, 1, map[string]any{"code": "a"}, nil}) },
			wantErr: "code and message",
		},
		{name: "fd not a bool", body: func(t *testing.T) []byte { return mp(t, []any{2, "x", map[string]any{"fd": 1}}) }, wantErr: `"fd"`},
		{
			name: "trailing bytes",
			body: func(t *testing.T) []byte {
				return append(mp(t, []any{0, 1, "ping", map[string]any{}}), 0xc0)
			},
			wantErr: "after the message array",
		},
		{
			name: "integer map key",
			// [0, 1, "ping", {1: 2}]
			body:    func(t *testing.T) []byte { return []byte{0x94, 0x00, 0x01, 0xa4, 'p', 'i', 'n', 'g', 0x81, 0x01, 0x02} },
			wantErr: "not a string",
		},
		{
			name: "extension value",
			// [2, "x", {"a": fixext1}]
			body:    func(t *testing.T) []byte { return []byte{0x93, 0x02, 0xa1, 'x', 0x81, 0xa1, 'a', 0xd4, 0x01, 0x00} },
			wantErr: "extension",
		},
		{
			name: "array length lies",
			// array32 claiming 2^32-1 elements in a 5-byte body
			body:    func(t *testing.T) []byte { return []byte{0xdd, 0xff, 0xff, 0xff, 0xff} },
			wantErr: "claims",
		},
		{
			name: "map length lies",
			// [2, "x", map32 claiming 2^32-1 entries]
			body:    func(t *testing.T) []byte { return []byte{0x93, 0x02, 0xa1, 'x', 0xdf, 0xff, 0xff, 0xff, 0xff} },
			wantErr: "claims",
		},
		{
			name: "nesting too deep",
			body: func(t *testing.T) []byte {
				return append(bytes.Repeat([]byte{0x91}, 100), 0xc0)
			},
			wantErr: "deeper",
		},
		{name: "truncated body", body: func(t *testing.T) []byte { return mp(t, []any{0, 1, "ping", map[string]any{}})[:5] }, wantErr: "msgpack"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := decodeBody(tt.body(t))
			if tt.wantErr != "" {
				var pe *ProtocolError
				if !errors.As(err, &pe) {
					t.Fatalf("err = %v (%T), want a protocolError", err, err)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to mention %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if tt.check != nil {
				tt.check(t, m)
			}
		})
	}
}

func TestFrameRoundTrip(t *testing.T) {
	msgs := []*Message{
		NewRequest(1, "hello", map[string]any{"protocol": uint64(1)}),
		NewRequest(4294967295, "start", map[string]any{
			"hostname": "a", "tags": []string{"tag:x", "tag:y"}, "ephemeral": true, "nested": map[string]any{"k": []any{}},
		}),
		NewNotification("grant", map[string]any{"listener": uint64(3), "n": uint64(300000)}),
		NewNotification("empty", nil),
		NewResponse(9, map[string]any{"fd": true, "conn": uint64(1 << 40), "neg": int64(-5), "f": 2.5}, nil),
		NewResponse(10, nil, &Error{Code: "timeout", Message: "slow"}),
		NewResponse(11, nil, nil),
	}
	for _, m := range msgs {
		frame, err := EncodeFrame(m)
		if err != nil {
			t.Fatalf("encode %+v: %v", m, err)
		}
		if got := binary.BigEndian.Uint32(frame); int(got) != len(frame)-4 {
			t.Fatalf("header says %d, body is %d", got, len(frame)-4)
		}
		var in fdInbox
		var fds []int
		if m.carriesFD() {
			w, r := fdtest.PipeFD(t)
			r.Close()
			fds = []int{w}
		}
		in.push(frame, fds)
		got, err := in.next()
		if err != nil || got == nil {
			t.Fatalf("decode %+v: %v, %v", m, got, err)
		}
		if got.FD >= 0 {
			unix.Close(got.FD)
		}
		// Decoding widens integer types, so compare by re-encoding.
		again, err := EncodeFrame(got)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(frame, again) {
			t.Errorf("round trip of %+v changed the bytes:\n%x\n%x", m, frame, again)
		}
		if got.Kind != m.Kind || got.ID != m.ID || got.Method != m.Method || got.carriesFD() != m.carriesFD() {
			t.Errorf("round trip: got %+v, want %+v", got, m)
		}
	}
}

func TestEncodeFrameSizeCap(t *testing.T) {
	tests := []struct {
		name    string
		size    int
		wantErr bool
	}{
		{"small", 100, false},
		{"just under", MaxFrameBody - 64, false},
		{"over", MaxFrameBody + 1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := EncodeFrame(NewResponse(1, map[string]any{"s": strings.Repeat("x", tt.size)}, nil))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
		})
	}
}

func TestInboxFrameLengths(t *testing.T) {
	ping := mp(t, []any{0, 1, "ping", map[string]any{}})
	tests := []struct {
		name    string
		data    []byte
		wantMsg bool
		wantErr string
	}{
		{"complete", frameOf(ping), true, ""},
		{"zero length", []byte{0, 0, 0, 0}, false, "outside"},
		// Refused from the header alone: the 1 MiB + 1 body is never awaited.
		{"over the cap", []byte{0x00, 0x10, 0x00, 0x01}, false, "outside"},
		{"max uint32", []byte{0xff, 0xff, 0xff, 0xff}, false, "outside"},
		{"partial header", []byte{0, 0}, false, ""},
		{"partial body", frameOf(ping)[:6], false, ""},
		{"length covers less than the array", append([]byte{0, 0, 0, 3}, ping...), false, "msgpack"},
		{"length covers more than the array", append(binary.BigEndian.AppendUint32(nil, uint32(len(ping)+1)), append(ping, 0xc0)...), false, "after the message array"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var in fdInbox
			in.push(tt.data, nil)
			m, err := in.next()
			switch {
			case tt.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
			case err != nil:
				t.Fatalf("unexpected error %v", err)
			case (m != nil) != tt.wantMsg:
				t.Fatalf("message = %v, want one: %v", m, tt.wantMsg)
			}
		})
	}
}
