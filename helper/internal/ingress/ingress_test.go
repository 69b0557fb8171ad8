package ingress

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"
)

// TestReadSNI reads the server name from a real ClientHello and returns every byte it read,
// so that the relay can pass the handshake on untouched.
func TestReadSNI(t *testing.T) {
	for _, tc := range []struct{ name, sni, want string }{
		{"name", "Web.Tailnet.Test", "web.tailnet.test"},
		{"no name", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, server := net.Pipe()
			defer client.Close()
			defer server.Close()
			var sent bytes.Buffer
			go func() {
				c := tls.Client(teeConn{client, &sent}, &tls.Config{ServerName: tc.sni, InsecureSkipVerify: tc.sni == ""})
				c.SetDeadline(time.Now().Add(5 * time.Second))
				c.Handshake() // fails once the pipe closes; only its ClientHello matters
			}()
			server.SetDeadline(time.Now().Add(5 * time.Second))
			sni, hello, err := readSNI(server)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("no SNI: got %q, want an error", sni)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if sni != tc.want {
				t.Errorf("sni = %q, want %q", sni, tc.want)
			}
			server.Close()
			if !bytes.HasPrefix(sent.Bytes(), hello) || len(hello) == 0 {
				t.Errorf("returned %d bytes that are not what the client sent", len(hello))
			}
		})
	}
}

type teeConn struct {
	net.Conn
	w io.Writer
}

func (c teeConn) Write(p []byte) (int, error) {
	c.w.Write(p)
	return c.Conn.Write(p)
}
