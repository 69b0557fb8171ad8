package socks5

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// conn is a client's bytes to read and what the server wrote back.
type conn struct {
	in  *bytes.Reader
	out bytes.Buffer
}

func (c *conn) Read(p []byte) (int, error)  { return c.in.Read(p) }
func (c *conn) Write(p []byte) (int, error) { return c.out.Write(p) }

func greeting(methods ...byte) []byte { return append([]byte{5, byte(len(methods))}, methods...) }

func auth(user, pass string) []byte {
	b := []byte{1, byte(len(user))}
	b = append(b, user...)
	b = append(b, byte(len(pass)))
	return append(b, pass...)
}

func join(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func TestNegotiate(t *testing.T) {
	domainReq := join([]byte{5, 1, 0, 3, 2}, []byte("db"), []byte{0x15, 0x38})
	tests := []struct {
		name     string
		in       []byte
		wantReq  Request
		wantErr  string
		wantOut  []byte
		credFail bool
	}{
		{"domain", join(greeting(0, 2), auth("u", "p"), domainReq), Request{"db", 5432}, "",
			[]byte{5, 2, 1, 0}, false},
		{"ipv4", join(greeting(2), auth("u", "p"), []byte{5, 1, 0, 1, 100, 64, 0, 1, 0, 80}),
			Request{"100.64.0.1", 80}, "", []byte{5, 2, 1, 0}, false},
		{"ipv6", join(greeting(2), auth("u", "p"), []byte{5, 1, 0, 4, 0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 80}),
			Request{"fd7a:115c:a1e0::1", 80}, "", []byte{5, 2, 1, 0}, false},
		{"no password method", greeting(0), Request{}, "no username/password", []byte{5, 0xff}, false},
		{"wrong password", join(greeting(2), auth("u", "WRONG-SECRET"), domainReq), Request{}, "wrong username",
			[]byte{5, 2, 1, 1}, true},
		{"wrong user", join(greeting(2), auth("v", "p"), domainReq), Request{}, "wrong username",
			[]byte{5, 2, 1, 1}, true},
		{"bind", join(greeting(2), auth("u", "p"), []byte{5, 2, 0, 3, 2}, []byte("db"), []byte{0, 80}),
			Request{}, "only CONNECT", []byte{5, 2, 1, 0, 5, CommandNotSupported, 0, 1, 0, 0, 0, 0, 0, 0}, false},
		{"address type", join(greeting(2), auth("u", "p"), []byte{5, 1, 0, 9}), Request{}, "address type",
			[]byte{5, 2, 1, 0, 5, AddressTypeNotSupported, 0, 1, 0, 0, 0, 0, 0, 0}, false},
		{"socks4", []byte{4, 1, 0, 80}, Request{}, "version 4", nil, false},
		{"short", greeting(2)[:1], Request{}, "greeting", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &conn{in: bytes.NewReader(tt.in)}
			req, err := Negotiate(c, "u", "p")
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			if errors.Is(err, ErrBadCredential) != tt.credFail {
				t.Errorf("ErrBadCredential: %v", err)
			}
			if err != nil && strings.Contains(err.Error(), "WRONG-SECRET") {
				t.Errorf("the error shows the credential: %v", err)
			}
			if req != tt.wantReq {
				t.Errorf("request = %+v, want %+v", req, tt.wantReq)
			}
			if !bytes.Equal(c.out.Bytes(), tt.wantOut) {
				t.Errorf("wrote % x, want % x", c.out.Bytes(), tt.wantOut)
			}
			if tt.credFail && c.in.Len() != len(domainReq) {
				t.Errorf("read the request after a refused credential")
			}
		})
	}
}

func TestWriteReply(t *testing.T) {
	var b bytes.Buffer
	if err := WriteReply(&b, HostUnreachable); err != nil {
		t.Fatal(err)
	}
	if got, want := b.Bytes(), []byte{5, 4, 0, 1, 0, 0, 0, 0, 0, 0}; !bytes.Equal(got, want) {
		t.Errorf("% x, want % x", got, want)
	}
	if got := (Request{"fd7a::1", 80}).Address(); got != "[fd7a::1]:80" {
		t.Errorf("Address = %q", got)
	}
	var _ io.ReadWriter = &conn{}
}
