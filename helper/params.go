package main

import "fmt"

// paramReader reads typed fields from a request's params. The first problem it finds is kept
// as a bad_request error that names the field and the rule; later reads return zero values,
// so a handler reads every field and then checks err once.
type paramReader struct {
	p   map[string]any
	err *rpcError
}

func newParamReader(p map[string]any) *paramReader { return &paramReader{p: p} }

func (r *paramReader) fail(key, format string, args ...any) {
	if r.err == nil {
		r.err = newError(codeBadRequest, "%q %s", key, fmt.Sprintf(format, args...))
	}
}

// lookup returns the field, treating nil like a missing field.
func (r *paramReader) lookup(key string) (any, bool) {
	v, ok := r.p[key]
	return v, ok && v != nil
}

// string reads a required string.
func (r *paramReader) string(key string) string {
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

// optString reads an optional string; missing or nil gives "".
func (r *paramReader) optString(key string) string {
	if _, ok := r.lookup(key); !ok {
		return ""
	}
	return r.string(key)
}

// bool reads a required bool.
func (r *paramReader) bool(key string) bool {
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

// optBool reads an optional bool; missing or nil gives false.
func (r *paramReader) optBool(key string) bool {
	if _, ok := r.lookup(key); !ok {
		return false
	}
	return r.bool(key)
}

// uint reads a required unsigned integer in [min, max].
func (r *paramReader) uint(key string, min, max uint64) uint64 {
	v, ok := r.lookup(key)
	if !ok {
		r.fail(key, "is required")
		return 0
	}
	n, ok := asUint(v)
	if !ok || n < min || n > max {
		r.fail(key, "must be an integer in %d..%d", min, max)
		return 0
	}
	return n
}

// optUint reads an optional unsigned integer in [min, max]; missing or nil gives def.
func (r *paramReader) optUint(key string, min, max, def uint64) uint64 {
	if _, ok := r.lookup(key); !ok {
		return def
	}
	return r.uint(key, min, max)
}

// strings reads a list of strings; missing or nil gives an empty list.
func (r *paramReader) strings(key string) []string {
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
