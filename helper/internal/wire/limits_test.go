package wire

import (
	"errors"
	"runtime"
	"testing"
)

// The bounds of docs/protocol.md §9, each hit on purpose: the helper refuses the excess with a
// typed error (or, for framing, a protocol error) and keeps serving.

// TestDecodeBodyLyingLengthsDoNotAllocate: a length field is checked against the bytes that
// are really there before anything is allocated for it. (A bin32 claiming 4 GiB used to be
// allocated in full by the msgpack library before the read failed.)
func TestDecodeBodyLyingLengthsDoNotAllocate(t *testing.T) {
	prefix := []byte{0x93, 0x02, 0xa1, 'x', 0x81, 0xa1, 'a'} // [2, "x", {"a": …
	for _, tt := range []struct {
		name string
		head []byte
	}{
		{"bin32", []byte{0xc6, 0xff, 0xff, 0xff, 0xff}},
		{"str32", []byte{0xdb, 0xff, 0xff, 0xff, 0xff}},
		{"array32", []byte{0xdd, 0xff, 0xff, 0xff, 0xff}},
		{"map32", []byte{0xdf, 0xff, 0xff, 0xff, 0xff}},
		{"bin16", []byte{0xc5, 0xff, 0xff}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			body := append(append(append([]byte(nil), prefix...), tt.head...), "a few bytes"...)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := decodeBody(body)
			runtime.ReadMemStats(&after)
			if _, ok := errors.AsType[*ProtocolError](err); !ok {
				t.Fatalf("err = %v, want a protocol error", err)
			}
			// The library reads strings in steps of 1 MiB, and a bin or an array takes what
			// the body holds: a few MiB at most, nowhere near the 4 GiB claimed.
			if got := after.TotalAlloc - before.TotalAlloc; got > 16<<20 {
				t.Fatalf("decoding a %d-byte body allocated %d MiB", len(body), got>>20)
			}
		})
	}
}
