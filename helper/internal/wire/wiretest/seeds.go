package wiretest

import (
	"bytes"
	"encoding/binary"
	"os"
	"slices"
	"strconv"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/tsproc/tsproc/helper/internal/wire"
)

// Seed corpus helpers for the fuzz targets (wire's FuzzDecode, the node's FuzzDispatch).

// Seed is one file of a fuzz target's seed corpus.
type Seed struct {
	Name string
	File []byte // in the format of `go test fuzz v1`
}

// SeedFile renders values in the corpus file format (internal/fuzz's marshalCorpusFile).
func SeedFile(name string, vals ...any) Seed {
	var b bytes.Buffer
	b.WriteString("go test fuzz v1\n")
	for _, v := range vals {
		if bs, ok := v.([]byte); ok {
			b.WriteString("[]byte(" + strconv.Quote(string(bs)) + ")\n")
		} else if c, ok := v.(byte); ok {
			b.WriteString("byte(" + strconv.QuoteRune(rune(c)) + ")\n")
		} else {
			panic("unsupported seed type")
		}
	}
	return Seed{Name: name, File: b.Bytes()}
}

// SeedFrame encodes m, failing the test on error.
func SeedFrame(t *testing.T, m *wire.Message) []byte {
	t.Helper()
	f, err := wire.EncodeFrame(m)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// Req is the frame of a request.
func Req(t *testing.T, id uint32, method string, params map[string]any) []byte {
	return SeedFrame(t, wire.NewRequest(id, method, params))
}

// RawFrame is body with its length header.
func RawFrame(body []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
}

// HostileFrames are frames that break the protocol, shared by both targets.
func HostileFrames(t *testing.T) map[string][]byte {
	ping := Req(t, 1, "ping", map[string]any{})
	return map[string][]byte{
		"zero-length":          {0, 0, 0, 0},
		"length-over-cap":      binary.BigEndian.AppendUint32(nil, wire.MaxFrameBody+1),
		"length-max":           {0xff, 0xff, 0xff, 0xff, 'j', 'u', 'n', 'k'},
		"length-1mib":          append(binary.BigEndian.AppendUint32(nil, wire.MaxFrameBody), 0x94, 0x00),
		"truncated-header":     ping[:3],
		"truncated-body":       ping[:len(ping)-1],
		"trailing-byte":        RawFrame(append(slices.Clone(ping[4:]), 0xc0)),
		"not-an-array":         RawFrame([]byte{0x81, 0xa1, 'a', 0x01}),
		"empty-array":          RawFrame([]byte{0x90}),
		"kind-3":               RawFrame([]byte{0x93, 0x03, 0xa1, 'x', 0x80}),
		"kind-string":          RawFrame([]byte{0x94, 0xa1, '0', 0x01, 0xa1, 'x', 0x80}),
		"kind-float":           RawFrame([]byte{0x94, 0xcb, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xa1, 'x', 0x80}),
		"id-negative":          RawFrame([]byte{0x94, 0x00, 0xff, 0xa1, 'x', 0x80}),
		"id-2^32":              RawFrame([]byte{0x94, 0x00, 0xcf, 0, 0, 0, 1, 0, 0, 0, 0, 0xa1, 'x', 0x80}),
		"method-int":           RawFrame([]byte{0x94, 0x00, 0x01, 0x05, 0x80}),
		"method-bin":           RawFrame([]byte{0x94, 0x00, 0x01, 0xc4, 0x04, 'p', 'i', 'n', 'g', 0x80}),
		"params-nil":           RawFrame([]byte{0x94, 0x00, 0x01, 0xa4, 'p', 'i', 'n', 'g', 0xc0}),
		"params-array":         RawFrame([]byte{0x94, 0x00, 0x01, 0xa4, 'p', 'i', 'n', 'g', 0x90}),
		"int-map-key":          RawFrame([]byte{0x94, 0x00, 0x01, 0xa4, 'p', 'i', 'n', 'g', 0x81, 0x01, 0x02}),
		"ext-value":            RawFrame([]byte{0x93, 0x02, 0xa1, 'x', 0x81, 0xa1, 'a', 0xd4, 0x01, 0x00}),
		"array32-lies":         RawFrame([]byte{0xdd, 0xff, 0xff, 0xff, 0xff}),
		"map32-lies":           RawFrame([]byte{0x93, 0x02, 0xa1, 'x', 0xdf, 0xff, 0xff, 0xff, 0xff}),
		"bin32-lies":           RawFrame([]byte{0x93, 0x02, 0xa1, 'x', 0x81, 0xa1, 'a', 0xc6, 0xff, 0xff, 0xff, 0xff}),
		"str32-lies":           RawFrame([]byte{0x93, 0x02, 0xa1, 'x', 0x81, 0xa1, 'a', 0xdb, 0xff, 0xff, 0xff, 0xff}),
		"nested-100":           RawFrame(append(bytes.Repeat([]byte{0x91}, 100), 0xc0)),
		"fd-not-bool":          RawFrame([]byte{0x93, 0x02, 0xa1, 'x', 0x81, 0xa2, 'f', 'd', 0x01}),
		"response-both":        seedFrameRaw(t, []any{1, 1, map[string]any{"code": "a", "message": "b"}, map[string]any{}}),
		"response-from-host":   SeedFrame(t, wire.NewResponse(9, map[string]any{}, nil)),
		"invalid-utf8-method":  RawFrame([]byte{0x94, 0x00, 0x01, 0xa2, 0xff, 0xfe, 0x80}),
		"fd-flag-without-fd":   SeedFrame(t, wire.NewNotification("grant", map[string]any{"fd": true})),
		"request-fd-no-fd":     Req(t, 2, "status", map[string]any{"fd": true}),
		"notification-unknown": SeedFrame(t, wire.NewNotification("no_such_note", map[string]any{"x": 1})),
	}
}

// seedFrameRaw is the frame of v, marshalled as it is.
func seedFrameRaw(t *testing.T, v any) []byte {
	t.Helper()
	b, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return RawFrame(b)
}

// WriteCorpus replaces testdata/fuzz/<target> with seeds.
func WriteCorpus(t *testing.T, target string, seeds []Seed) {
	dir := "testdata/fuzz/" + target
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, s := range seeds {
		if err := os.WriteFile(dir+"/"+s.Name, s.File, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%s: %d seeds", target, len(seeds))
}
