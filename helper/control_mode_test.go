package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tsproc/tsproc/helper/internal/localtailnet"
	"github.com/tsproc/tsproc/helper/internal/tsnettest"
)

// The control mode as a subprocess (this test binary, see TestMain): its command line, its
// JSON line and its lifetime. The local tailnet itself is tested in internal/localtailnet.

// helperProcess is tsproc-helper running as a subprocess (this test binary, see TestMain).
type helperProcess struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *bufio.Reader
	stderr *strings.Builder
	done   chan error
}

func startHelper(t *testing.T, args ...string) *helperProcess {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), helperMainEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	// An os.Pipe rather than cmd.StdoutPipe: Wait closes the latter, and the tests read stdout
	// to its end after the process has exited.
	stdout, stdoutW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdout.Close() })
	cmd.Stdout = stdoutW
	h := &helperProcess{cmd: cmd, stdin: stdin, stdout: bufio.NewReader(stdout), stderr: new(strings.Builder), done: make(chan error, 1)}
	cmd.Stderr = h.stderr
	err = cmd.Start()
	stdoutW.Close()
	if err != nil {
		t.Fatal(err)
	}
	go func() { h.done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-h.done
	})
	return h
}

// wait returns the exit code, failing the test if the process does not exit within d.
func (h *helperProcess) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case err := <-h.done:
		h.done <- err // for the cleanup
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(d):
		t.Fatalf("helper did not exit within %v; stderr:\n%s", d, h.stderr)
	}
	panic("unreachable")
}

func (h *helperProcess) readInfo(t *testing.T) localtailnet.Info {
	t.Helper()
	linec := make(chan string, 1)
	go func() {
		line, _ := h.stdout.ReadString('\n')
		linec <- line
	}()
	var line string
	select {
	case line = <-linec:
	case <-time.After(15 * time.Second):
		t.Fatalf("no JSON line within 15s; stderr:\n%s", h.stderr)
	}
	var info localtailnet.Info
	dec := json.NewDecoder(strings.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&info); err != nil {
		t.Fatalf("JSON line %q: %v; stderr:\n%s", line, err, h.stderr)
	}
	return info
}

func TestControlSubprocess(t *testing.T) {
	const secret = "not-a-tskey-S3CRET-value" // redact alone would not catch this one
	tests := []struct {
		name        string
		args        []string
		stdinFirst  string // written before reading the JSON line
		stop        func(h *helperProcess) error
		wantAuthKey bool
		wantInter   bool
		wantDomain  string
		nodeKey     string // if non-empty, a node logs in with this key before the stop
	}{
		{
			name:       "stdin-eof",
			args:       []string{"control"},
			stop:       func(h *helperProcess) error { return h.stdin.Close() },
			wantDomain: "tailnet.test",
		},
		{
			name:       "sigterm",
			args:       []string{"control", "--require-interactive-login", "--magic-dns-domain", "example.test"},
			stop:       func(h *helperProcess) error { return h.cmd.Process.Signal(syscall.SIGTERM) },
			wantInter:  true,
			wantDomain: "example.test",
		},
		{
			name:        "auth-key-from-stdin",
			args:        []string{"control", "--verbose", "--require-auth-key", "-"},
			stdinFirst:  secret + "\n",
			stop:        func(h *helperProcess) error { return h.stdin.Close() },
			wantAuthKey: true,
			wantDomain:  "tailnet.test",
			nodeKey:     secret,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startHelper(t, tt.args...)
			if tt.stdinFirst != "" {
				io.WriteString(h.stdin, tt.stdinFirst)
			}
			info := h.readInfo(t)
			if info.PID != h.cmd.Process.Pid {
				t.Errorf("pid = %d, want %d", info.PID, h.cmd.Process.Pid)
			}
			if !strings.HasPrefix(info.ControlURL, "http://127.0.0.1:") || info.DERPPort == 0 || info.STUNPort == 0 {
				t.Errorf("bad info line %+v", info)
			}
			if info.RequireAuthKey != tt.wantAuthKey || info.InteractiveLogin != tt.wantInter || info.MagicDNSSuffix != tt.wantDomain {
				t.Errorf("info %+v; want require_auth_key %v, interactive_login %v, magic_dns_suffix %q",
					info, tt.wantAuthKey, tt.wantInter, tt.wantDomain)
			}
			res, err := http.Get(info.ControlURL + "/health")
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if tt.nodeKey != "" {
				node := tsnettest.NewNode(t, info.ControlURL, "nodek", tt.nodeKey)
				if _, err := tsnettest.UpWithin(t, node, 30*time.Second); err != nil {
					t.Fatalf("Up with the key given on stdin: %v", err)
				}
				// Now, while control can still take the ephemeral node's logout; later, Close
				// would wait seconds for an unreachable control.
				node.Close()
			}

			start := time.Now()
			if err := tt.stop(h); err != nil {
				t.Fatal(err)
			}
			if code := h.wait(t, 3*time.Second); code != 0 {
				t.Errorf("exit code %d, want 0; stderr:\n%s", code, h.stderr)
			}
			t.Logf("stopped in %v", time.Since(start).Round(time.Millisecond))
			if rest, _ := io.ReadAll(h.stdout); len(rest) != 0 {
				t.Errorf("more than one line on stdout: %q", rest)
			}
			if strings.Contains(h.stderr.String(), secret) {
				t.Errorf("stderr contains the auth key:\n%s", h.stderr)
			}
			for line := range strings.Lines(h.stderr.String()) {
				if !json.Valid([]byte(line)) {
					t.Errorf("stderr line is not JSON: %q", line)
				}
			}
		})
	}
}

func TestControlSubprocessUsageErrors(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		stdin      string
		wantStderr string
	}{
		{"non-loopback", []string{"control", "--listen-addr", "0.0.0.0"}, "", "not a loopback address"},
		{"lan-address", []string{"control", "--listen-addr", "192.168.1.10"}, "", "not a loopback address"},
		{"hostname", []string{"control", "--listen-addr", "example.com"}, "", "not an IP address"},
		{"extra-args", []string{"control", "extra"}, "", "unexpected arguments"},
		{"unknown-flag", []string{"control", "--bogus"}, "", "flag provided but not defined"},
		{"no-key-on-stdin", []string{"control", "--require-auth-key", "-"}, "", "no key on the first line of stdin"},
		{"bad-domain", []string{"control", "--magic-dns-domain", "bad domain"}, "", "not a valid DNS name"},
		{"empty-domain", []string{"control", "--magic-dns-domain", ""}, "", "not a valid DNS name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startHelper(t, tt.args...)
			io.WriteString(h.stdin, tt.stdin)
			h.stdin.Close()
			if code := h.wait(t, 5*time.Second); code != 2 {
				t.Errorf("exit code %d, want 2", code)
			}
			if !strings.Contains(h.stderr.String(), tt.wantStderr) {
				t.Errorf("stderr does not mention %q:\n%s", tt.wantStderr, h.stderr)
			}
			if out, _ := io.ReadAll(h.stdout); len(out) != 0 {
				t.Errorf("stdout = %q, want nothing", out)
			}
		})
	}
}
