package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// The frame codec of docs/protocol.md §1: a 4-byte big-endian body length, then a body that
// is exactly one msgpack array of msgpack-RPC shape. It knows nothing of sockets or fds.

const (
	FrameHeaderLen = 4
	MaxFrameBody   = 1 << 20 // 1 MiB

	// maxValueDepth bounds how deeply arrays and maps may nest in a body. No message of the
	// protocol nests more than a few levels; the bound keeps a hostile frame of a million
	// nested arrays from turning into a million-deep recursion.
	maxValueDepth = 32
)

// errFrameTooLarge is what encodeFrame returns for a message whose body would exceed
// maxFrameBody.
var errFrameTooLarge = errors.New("encoding frame: message too large")

type MsgKind int

const (
	KindRequest      MsgKind = 0
	KindResponse     MsgKind = 1
	KindNotification MsgKind = 2
)

// Message is one frame's body, decoded.
type Message struct {
	Kind   MsgKind
	ID     uint32         // requests and responses
	Method string         // requests and notifications
	Params map[string]any // requests and notifications; never nil once decoded
	Err    *Error         // responses; nil on success
	Result map[string]any // responses; nil when err is set

	// FD is the file descriptor the message carries ("fd": true), or -1. On receipt it is
	// filled from the fd FIFO; on sending it is passed with SCM_RIGHTS. Whoever holds the
	// message owns the fd and must close it.
	FD int
}

func NewRequest(id uint32, method string, params map[string]any) *Message {
	return &Message{Kind: KindRequest, ID: id, Method: method, Params: params, FD: -1}
}

func NewNotification(method string, params map[string]any) *Message {
	return &Message{Kind: KindNotification, Method: method, Params: params, FD: -1}
}

func NewResponse(id uint32, result map[string]any, err *Error) *Message {
	return &Message{Kind: KindResponse, ID: id, Result: result, Err: err, FD: -1}
}

// fields returns the map that may say "fd": true: params, or result for a response.
func (m *Message) fields() map[string]any {
	if m.Kind == KindResponse {
		return m.Result
	}
	return m.Params
}

// carriesFD reports whether the message says it carries a file descriptor.
func (m *Message) carriesFD() bool {
	v, _ := m.fields()["fd"].(bool)
	return v
}

// encodeFrame returns m as a complete frame, header included.
func EncodeFrame(m *Message) ([]byte, error) {
	var buf bytes.Buffer
	buf.Write(make([]byte, FrameHeaderLen)) // the length, filled in below
	enc := msgpack.NewEncoder(&buf)
	enc.UseCompactInts(true)
	enc.SetSortMapKeys(true) // deterministic bytes make tests and captures comparable

	var err error
	if m.Kind != KindRequest && m.Kind != KindNotification && m.Kind != KindResponse {
		return nil, fmt.Errorf("encoding frame: unknown message kind %d", m.Kind)
	}
	switch m.Kind {
	case KindRequest:
		err = encodeAll(enc, int64(KindRequest), uint64(m.ID), m.Method, nonNilMap(m.Params))
	case KindNotification:
		err = encodeAll(enc, int64(KindNotification), m.Method, nonNilMap(m.Params))
	case KindResponse:
		if m.Err != nil {
			errMap := map[string]any{"code": m.Err.Code, "message": m.Err.Message}
			err = encodeAll(enc, int64(KindResponse), uint64(m.ID), errMap, nil)
		} else {
			err = encodeAll(enc, int64(KindResponse), uint64(m.ID), nil, nonNilMap(m.Result))
		}
	}
	if err != nil {
		return nil, fmt.Errorf("encoding frame: %w", err)
	}
	frame := buf.Bytes()
	bodyLen := len(frame) - FrameHeaderLen
	if bodyLen > MaxFrameBody {
		return nil, fmt.Errorf("%w: body of %d bytes exceeds the %d-byte limit", errFrameTooLarge, bodyLen, MaxFrameBody)
	}
	binary.BigEndian.PutUint32(frame, uint32(bodyLen))
	return frame, nil
}

func encodeAll(enc *msgpack.Encoder, elems ...any) error {
	if err := enc.EncodeArrayLen(len(elems)); err != nil {
		return err
	}
	for _, e := range elems {
		if err := enc.Encode(e); err != nil {
			return err
		}
	}
	return nil
}

func nonNilMap(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	return m
}

// checkFrameLen validates a frame header's length before anything is allocated for it.
func checkFrameLen(n uint32) error {
	if n == 0 || n > MaxFrameBody {
		return protoErrorf("frame length %d outside 1..%d", n, MaxFrameBody)
	}
	return nil
}

// decodeBody decodes one frame body. Any deviation from docs/protocol.md §1 — not an array,
// wrong length or kind, a field of the wrong type, bytes after the array — is a
// protocolError. The returned message has fd -1.
func decodeBody(body []byte) (*Message, error) {
	r := bytes.NewReader(body)
	// bytes.Reader is an io.ByteScanner, so the decoder reads from it directly without
	// buffering ahead, and r.Len() below is exactly what the array left unread.
	dec := msgpack.NewDecoder(r)
	v, err := decodeValue(dec, r, 0)
	if err != nil {
		return nil, protoErrorf("bad msgpack: %v", err)
	}
	if r.Len() != 0 {
		return nil, protoErrorf("%d bytes after the message array", r.Len())
	}
	arr, ok := v.([]any)
	if !ok {
		return nil, protoErrorf("body is a %T, not an array", v)
	}
	if len(arr) == 0 {
		return nil, protoErrorf("empty message array")
	}
	kind, ok := AsUint(arr[0])
	if !ok || kind > uint64(KindNotification) {
		return nil, protoErrorf("message kind %v is not 0, 1 or 2", arr[0])
	}
	m := &Message{Kind: MsgKind(kind), FD: -1}
	switch m.Kind {
	case KindRequest:
		if len(arr) != 4 {
			return nil, protoErrorf("request has %d elements, want 4", len(arr))
		}
		if m.ID, err = decodeID(arr[1]); err != nil {
			return nil, err
		}
		if m.Method, ok = arr[2].(string); !ok {
			return nil, protoErrorf("request method is a %T, not a string", arr[2])
		}
		if m.Params, ok = arr[3].(map[string]any); !ok {
			return nil, protoErrorf("request params is a %T, not a map", arr[3])
		}
	case KindNotification:
		if len(arr) != 3 {
			return nil, protoErrorf("notification has %d elements, want 3", len(arr))
		}
		if m.Method, ok = arr[1].(string); !ok {
			return nil, protoErrorf("notification method is a %T, not a string", arr[1])
		}
		if m.Params, ok = arr[2].(map[string]any); !ok {
			return nil, protoErrorf("notification params is a %T, not a map", arr[2])
		}
	case KindResponse:
		if len(arr) != 4 {
			return nil, protoErrorf("response has %d elements, want 4", len(arr))
		}
		if m.ID, err = decodeID(arr[1]); err != nil {
			return nil, err
		}
		if arr[2] != nil {
			if m.Err, err = decodeErrorValue(arr[2]); err != nil {
				return nil, err
			}
			if arr[3] != nil {
				return nil, protoErrorf("response has both an error and a result")
			}
		} else if m.Result, ok = arr[3].(map[string]any); !ok {
			return nil, protoErrorf("response result is a %T, not a map", arr[3])
		}
	}
	if fd, present := m.fields()["fd"]; present {
		if _, ok := fd.(bool); !ok {
			return nil, protoErrorf(`"fd" is a %T, not a bool`, fd)
		}
	}
	return m, nil
}

func decodeID(v any) (uint32, error) {
	id, ok := AsUint(v)
	if !ok || id > math.MaxUint32 {
		return 0, protoErrorf("id %v is not an unsigned integer below 2^32", v)
	}
	return uint32(id), nil
}

func decodeErrorValue(v any) (*Error, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return nil, protoErrorf("response error is a %T, not a map", v)
	}
	code, ok1 := m["code"].(string)
	msg, ok2 := m["message"].(string)
	if !ok1 || !ok2 {
		return nil, protoErrorf("response error needs string code and message")
	}
	return &Error{Code: code, Message: msg}, nil
}

// asUint returns v as an unsigned integer if it is a non-negative msgpack integer.
func AsUint(v any) (uint64, bool) {
	switch n := v.(type) {
	case uint64:
		return n, true
	case int64:
		if n >= 0 {
			return uint64(n), true
		}
	}
	return 0, false
}

// decodeValue decodes one msgpack value into nil, bool, int64, uint64, float64, string,
// []any or map[string]any. Unlike the library's generic decoding it refuses non-string map
// keys and extension types, bounds nesting, and checks every declared array, map or bin length
// against the bytes actually left, so a lying length cannot make it allocate.
func decodeValue(dec *msgpack.Decoder, r *bytes.Reader, depth int) (any, error) {
	if depth > maxValueDepth {
		return nil, fmt.Errorf("values nest deeper than %d", maxValueDepth)
	}
	c, err := dec.PeekCode()
	if err != nil {
		return nil, err
	}
	switch {
	case msgpcode.IsFixedMap(c) || c == msgpcode.Map16 || c == msgpcode.Map32:
		n, err := dec.DecodeMapLen()
		if err != nil {
			return nil, err
		}
		if n > r.Len()/2 { // every entry takes at least two bytes
			return nil, fmt.Errorf("map claims %d entries in %d bytes", n, r.Len())
		}
		m := make(map[string]any, n)
		for range n {
			kc, err := dec.PeekCode()
			if err != nil {
				return nil, err
			}
			if !msgpcode.IsString(kc) {
				return nil, fmt.Errorf("map key with code %#x is not a string", kc)
			}
			k, err := dec.DecodeString()
			if err != nil {
				return nil, err
			}
			if m[k], err = decodeValue(dec, r, depth+1); err != nil {
				return nil, err
			}
		}
		return m, nil
	case msgpcode.IsFixedArray(c) || c == msgpcode.Array16 || c == msgpcode.Array32:
		n, err := dec.DecodeArrayLen()
		if err != nil {
			return nil, err
		}
		if n > r.Len() { // every element takes at least one byte
			return nil, fmt.Errorf("array claims %d elements in %d bytes", n, r.Len())
		}
		s := make([]any, 0, n)
		for range n {
			v, err := decodeValue(dec, r, depth+1)
			if err != nil {
				return nil, err
			}
			s = append(s, v)
		}
		return s, nil
	case msgpcode.IsExt(c):
		return nil, fmt.Errorf("extension type (code %#x) not allowed", c)
	case msgpcode.IsBin(c):
		// Kept as []byte, never a string: a bin where the protocol wants a str is a wrong type.
		// Not dec.DecodeBytes: it allocates the declared length (up to 4 GiB) before reading.
		n, err := dec.DecodeBytesLen()
		if err != nil {
			return nil, err
		}
		if n > r.Len() {
			return nil, fmt.Errorf("bin claims %d bytes in %d", n, r.Len())
		}
		b := make([]byte, n)
		if err := dec.ReadFull(b); err != nil {
			return nil, err
		}
		return b, nil
	}
	// The remaining scalars; the loose form yields int64, uint64 and float64 for numbers.
	return dec.DecodeInterfaceLoose()
}
