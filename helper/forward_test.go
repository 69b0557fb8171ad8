package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// listeningFD returns a dup of l's fd, as the host passes it.
func listeningFD(t *testing.T, l interface {
	File() (*os.File, error)
}) int {
	t.Helper()
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd, err := unix.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

// TestListenerFromFD: forward takes a listening Unix socket or loopback TCP socket and
// nothing else, and never unlinks the host's path.
func TestListenerFromFD(t *testing.T) {
	path := filepath.Join(t.TempDir(), ".s.PGSQL.5432")
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ul.Close()
	ln, isUnix, err := listenerFromFD(listeningFD(t, ul))
	if err != nil || !isUnix {
		t.Fatalf("unix listener: %v, unix %v", err, isUnix)
	}
	// A connection reaches the copy, and its peer is this process's uid.
	go func() {
		if c, err := net.Dial("unix", path); err == nil {
			defer c.Close()
			c.Write([]byte("x"))
		}
	}()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	uid, err := peerUID(c.(*net.UnixConn))
	c.Close()
	if err != nil || uid != uint32(os.Getuid()) {
		t.Errorf("peerUID = %d, %v; want %d", uid, err, os.Getuid())
	}
	ln.Close()
	if _, err := os.Stat(path); err != nil {
		t.Errorf("closing the helper's copy removed the host's socket: %v", err)
	}

	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	ln, isUnix, err = listenerFromFD(listeningFD(t, tl.(*net.TCPListener)))
	if err != nil || isUnix {
		t.Fatalf("loopback TCP listener: %v, unix %v", err, isUnix)
	}
	ln.Close()

	refused := map[string]func() int{
		"not listening": func() int {
			fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
			if err != nil {
				t.Fatal(err)
			}
			unix.Close(fds[1])
			return fds[0]
		},
		"not loopback": func() int {
			l, err := net.Listen("tcp", "0.0.0.0:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			return listeningFD(t, l.(*net.TCPListener))
		},
		"not a socket": func() int {
			p, err := os.Open(os.DevNull)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			fd, _ := unix.Dup(int(p.Fd()))
			return fd
		},
	}
	for name, open := range refused {
		if _, _, err := listenerFromFD(open()); err == nil || !strings.Contains(err.Error(), `"fd"`) {
			t.Errorf("%s: err = %v, want a refusal", name, err)
		}
	}
}
