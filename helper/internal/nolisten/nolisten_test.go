//go:build linux

package nolisten

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// forbidListenChildEnv makes TestForbidListen's child run the checks in a process of its own:
// a seccomp filter cannot be taken back.
const forbidListenChildEnv = "TSPROC_TEST_FORBID_LISTEN_CHILD"

// TestForbidListen: after Forbid no thread of the process can open a TCP or Unix
// listener, while everything the node helper does still works: UDP (WireGuard), outbound TCP,
// socketpairs.
func TestForbidListen(t *testing.T) {
	if os.Getenv(forbidListenChildEnv) == "1" {
		forbidListenChild(t)
		return
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestForbidListen$", "-test.v")
	cmd.Env = append(os.Environ(), forbidListenChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	switch {
	case err != nil:
		t.Fatalf("child: %v\n%s", err, out)
	case bytes.Contains(out, []byte("--- SKIP")):
		t.Skipf("child skipped:\n%s", out)
	case !bytes.Contains(out, []byte("--- PASS: TestForbidListen")):
		t.Fatalf("child did not run the checks:\n%s", out)
	}
}

func forbidListenChild(t *testing.T) {
	// Something listening before the filter keeps working: the filter stops new listeners.
	before, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	if err := Forbid(); err != nil {
		t.Skipf("seccomp unavailable here: %v", err)
	}
	done := make(chan struct{})
	go func() { // from another goroutine, likely on another thread: TSYNC covers it
		defer close(done)
		for _, addr := range []string{"127.0.0.1:0", "0.0.0.0:0", "[::1]:0"} {
			if ln, err := net.Listen("tcp", addr); !errors.Is(err, unix.EPERM) {
				if ln != nil {
					ln.Close()
				}
				t.Errorf("listen tcp %s: %v, want EPERM", addr, err)
			}
		}
		path := filepath.Join(t.TempDir(), "sock")
		if ln, err := net.Listen("unix", path); !errors.Is(err, unix.EPERM) {
			if ln != nil {
				ln.Close()
			}
			t.Errorf("listen unix: %v, want EPERM", err)
		}
	}()
	<-done

	pc, err := net.ListenPacket("udp", "127.0.0.1:0") // magicsock's kind of socket
	if err != nil {
		t.Fatalf("UDP: %v", err)
	}
	defer pc.Close()
	c, err := net.Dial("tcp", before.Addr().String()) // control and DERP connections
	if err != nil {
		t.Fatalf("outbound TCP: %v", err)
	}
	c.Close()
	if _, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0); err != nil {
		t.Fatalf("socketpair: %v", err)
	}
}
