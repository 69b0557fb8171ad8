package wire

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// ParamReader reads typed fields from a request's params. The first problem it finds is kept
// as a bad_request error that names the field and the rule; later reads return zero values,
// so a handler reads every field and then checks err once.
type ParamReader struct {
	p   map[string]any
	Err *Error // the first problem found, or nil
}

// NewParamReader reads p.
func NewParamReader(p map[string]any) *ParamReader { return &ParamReader{p: p} }

func (r *ParamReader) fail(key, format string, args ...any) {
	if r.Err == nil {
		r.Err = NewError(CodeBadRequest, "%q %s", key, fmt.Sprintf(format, args...))
	}
}

// lookup returns the field, treating nil like a missing field.
func (r *ParamReader) lookup(key string) (any, bool) {
	v, ok := r.p[key]
	return v, ok && v != nil
}

// String reads a required string.
func (r *ParamReader) String(key string) string {
	v, ok := r.lookup(key)
	if !ok {
		r.fail(key, "is required")
		return ""
	}
	s, ok := v.(string)
	if !ok {
		r.fail(key, "must be a string, not %s", typeName(v))
	}
	return s
}

// OptString reads an optional string; missing or nil gives "".
func (r *ParamReader) OptString(key string) string {
	if _, ok := r.lookup(key); !ok {
		return ""
	}
	return r.String(key)
}

// Bool reads a required bool.
func (r *ParamReader) Bool(key string) bool {
	v, ok := r.lookup(key)
	if !ok {
		r.fail(key, "is required")
		return false
	}
	b, ok := v.(bool)
	if !ok {
		r.fail(key, "must be a bool, not %s", typeName(v))
	}
	return b
}

// OptBool reads an optional bool; missing or nil gives false.
func (r *ParamReader) OptBool(key string) bool {
	if _, ok := r.lookup(key); !ok {
		return false
	}
	return r.Bool(key)
}

// Uint reads a required unsigned integer in [min, max].
func (r *ParamReader) Uint(key string, min, max uint64) uint64 {
	v, ok := r.lookup(key)
	if !ok {
		r.fail(key, "is required")
		return 0
	}
	n, ok := AsUint(v)
	if !ok || n < min || n > max {
		r.fail(key, "must be an integer in %d..%d", min, max)
		return 0
	}
	return n
}

// OptUint reads an optional unsigned integer in [min, max]; missing or nil gives def.
func (r *ParamReader) OptUint(key string, min, max, def uint64) uint64 {
	if _, ok := r.lookup(key); !ok {
		return def
	}
	return r.Uint(key, min, max)
}

// Strings reads a list of strings; missing or nil gives an empty list.
func (r *ParamReader) Strings(key string) []string {
	v, ok := r.lookup(key)
	if !ok {
		return nil
	}
	list, ok := v.([]any)
	if !ok {
		r.fail(key, "must be a list of strings, not %s", typeName(v))
		return nil
	}
	out := make([]string, 0, len(list))
	for i, e := range list {
		s, ok := e.(string)
		if !ok {
			r.fail(key, "element %d must be a string, not %s", i, typeName(e))
			return nil
		}
		out = append(out, s)
	}
	return out
}

// typeName names a decoded msgpack value's type the way a host programmer thinks of it.
func typeName(v any) string {
	switch v.(type) {
	case nil:
		return "nil"
	case bool:
		return "bool"
	case int64, uint64:
		return "integer"
	case float64:
		return "float"
	case string:
		return "string"
	case []byte:
		return "bytes"
	case []any:
		return "list"
	case map[string]any:
		return "map"
	}
	return fmt.Sprintf("%T", v)
}

// ReceivedFD is the file descriptor a request carried ("fd": true), found in its params under
// "fd". Its handler takes it with ParamReader.FD; the dispatcher closes it otherwise.
type ReceivedFD struct{ fd int }

// close closes the fd unless a handler took it. A nil *ReceivedFD is fine.
func (r *ReceivedFD) close() {
	if r != nil && r.fd >= 0 {
		unix.Close(r.fd)
		r.fd = -1
	}
}

// FD takes the fd the request carried under key (which must say "fd": true): the caller owns
// it from now on, whatever else the reader finds wrong. A request without one is bad_request.
func (r *ParamReader) FD(key string) int {
	v, ok := r.lookup(key)
	passed, isFD := v.(*ReceivedFD)
	if !ok || !isFD || passed.fd < 0 {
		r.fail(key, "must come with a file descriptor")
		return -1
	}
	fd := passed.fd
	passed.fd = -1
	return fd
}
