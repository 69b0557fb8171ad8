package main

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tsproc/tsproc/helper/internal/fdtest"
	"github.com/tsproc/tsproc/helper/internal/wire/wiretest"
)

// These tests run `tsproc-helper node` as a real subprocess (this test binary; see TestMain
// and helperMainEnv) with its fds 0 and 1 on a socketpair, as the host starts it, to check
// the process lifetime of docs/protocol.md §11 and the fault injection the host's tests use.

// nodeProcess is a node-mode helper process and the host's end of its control channel.
type nodeProcess struct {
	cmd        *exec.Cmd
	host       *net.UnixConn
	stderrPath string
	done       chan error
}

func startNodeProcess(t *testing.T, fault string) *nodeProcess {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	helperEnd, hostEnd := fdtest.UnixPair(t)
	helperFile, err := helperEnd.File() // a dup, inherited as fds 0 and 1
	if err != nil {
		t.Fatal(err)
	}
	defer helperFile.Close()
	stderrPath := filepath.Join(t.TempDir(), "stderr")
	stderr, err := os.Create(stderrPath)
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()

	cmd := exec.Command(exe, "node", "-tsnet-logs=false")
	cmd.Env = append(os.Environ(), helperMainEnv+"=1", faultEnv+"="+fault,
		"TS_DISABLE_PORTMAPPER=1", "TS_DEBUG_OMIT_LOCAL_ADDRS=1",
		"GORACE=atexit_sleep_ms=0") // under -race, exit otherwise sleeps a second
	cmd.Stdin, cmd.Stdout, cmd.Stderr = helperFile, helperFile, stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	helperEnd.Close() // only the child holds the helper's end now
	p := &nodeProcess{cmd: cmd, host: hostEnd, stderrPath: stderrPath, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
	})
	return p
}

// wait returns the exit code, failing the test if the process does not exit within d.
func (p *nodeProcess) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		if ee, ok := errors.AsType[*exec.ExitError](err); ok {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(d):
		t.Fatalf("helper did not exit within %v; stderr:\n%s", d, p.stderr(t))
	}
	panic("unreachable")
}

func (p *nodeProcess) stderr(t *testing.T) string {
	b, err := os.ReadFile(p.stderrPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestNodeProcessLifetime(t *testing.T) {
	tests := []struct {
		name     string
		fault    string
		drive    func(t *testing.T, p *nodeProcess, h *wiretest.Host)
		within   time.Duration
		wantCode int
		wantLog  string
	}{
		{
			name:     "host closes the channel",
			drive:    func(t *testing.T, p *nodeProcess, h *wiretest.Host) { h.Hello(); p.host.Close() },
			within:   time.Second,
			wantCode: 0,
		},
		{
			name: "host closes the channel of a started node",
			drive: func(t *testing.T, p *nodeProcess, h *wiretest.Host) {
				h.Hello()
				ln, err := net.Listen("tcp", "127.0.0.1:0") // a control server that never answers
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { ln.Close() })
				h.MustCall("start", map[string]any{
					"hostname": "proc", "state_dir": t.TempDir(), "ephemeral": true, "memory_state": true,
					"control_url": "http://" + ln.Addr().String(), "auth_key": "tskey-auth-x-y",
				})
				p.host.Close()
			},
			// docs/protocol.md §11: within one second; a little slack for a loaded machine.
			within:   1500 * time.Millisecond,
			wantCode: 0,
		},
		{
			name: "shutdown",
			drive: func(t *testing.T, p *nodeProcess, h *wiretest.Host) {
				h.Hello()
				h.MustCall("shutdown", map[string]any{})
			},
			within:   5 * time.Second,
			wantCode: 0,
			wantLog:  "shutdown requested",
		},
		{
			name: "SIGTERM",
			drive: func(t *testing.T, p *nodeProcess, h *wiretest.Host) {
				h.Hello()
				p.cmd.Process.Signal(syscall.SIGTERM)
			},
			within:   5 * time.Second,
			wantCode: 0,
		},
		{
			name:     "protocol error",
			drive:    func(t *testing.T, p *nodeProcess, h *wiretest.Host) { p.host.Write([]byte{0, 0, 0, 0}) },
			within:   time.Second,
			wantCode: 1,
			wantLog:  "protocol error",
		},
		{
			name:     "fault exit_at_start",
			fault:    "exit_at_start",
			drive:    func(t *testing.T, p *nodeProcess, h *wiretest.Host) {},
			within:   5 * time.Second,
			wantCode: 3,
			wantLog:  "fault: exit_at_start",
		},
		{
			name:  "fault exit_after",
			fault: "exit_after:ping",
			drive: func(t *testing.T, p *nodeProcess, h *wiretest.Host) {
				h.Hello()
				h.Start("ping", map[string]any{})
			},
			within:   5 * time.Second,
			wantCode: 3,
			wantLog:  "fault: exit_after:ping",
		},
		{
			name:     "unknown fault",
			fault:    "explode",
			drive:    func(t *testing.T, p *nodeProcess, h *wiretest.Host) {},
			within:   5 * time.Second,
			wantCode: 2,
			wantLog:  "explode",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startNodeProcess(t, tt.fault)
			h := wiretest.NewHost(t, p.host)
			tt.drive(t, p, h)
			t0 := time.Now()
			code := p.wait(t, tt.within)
			t.Logf("exited %d after %v", code, time.Since(t0))
			if code != tt.wantCode {
				t.Errorf("exit code %d, want %d; stderr:\n%s", code, tt.wantCode, p.stderr(t))
			}
			if log := p.stderr(t); !strings.Contains(log, tt.wantLog) {
				t.Errorf("stderr does not mention %q:\n%s", tt.wantLog, log)
			}
			if log := p.stderr(t); strings.Contains(log, "tskey-auth-x-y") {
				t.Errorf("stderr leaks the auth key:\n%s", log)
			}
		})
	}
}

// TestNodeProcessParentDeath: a helper whose parent exits goes away even though the host
// still holds its end of the channel (so there is no EOF to notice).
func TestNodeProcessParentDeath(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	helperEnd, hostEnd := fdtest.UnixPair(t)
	helperFile, err := helperEnd.File()
	if err != nil {
		t.Fatal(err)
	}
	// The shell is the helper's parent; it exits 300 ms later. The explicit redirections
	// matter: without job control, sh gives a background job /dev/null as stdin.
	sh := exec.Command("/bin/sh", "-c", `"$0" node -tsnet-logs=false <&3 >&3 3<&- & sleep 0.3`, exe)
	sh.Env = append(os.Environ(), helperMainEnv+"=1")
	sh.ExtraFiles = []*os.File{helperFile}
	var stderr strings.Builder
	sh.Stderr = &stderr // sh's Wait returns only when the helper closed it too
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	helperFile.Close()
	helperEnd.Close()

	h := wiretest.NewHost(t, hostEnd)
	h.Hello()
	t0 := time.Now()
	select {
	case err, ok := <-h.ReadErr:
		if ok && err != nil {
			t.Fatalf("control channel: %v", err)
		}
		t.Logf("helper gone %v after start", time.Since(t0))
	case <-time.After(3 * time.Second):
		t.Fatal("helper still holds the control channel 3s after its parent exited")
	}
	if err := sh.Wait(); err != nil {
		t.Fatalf("sh: %v", err)
	}
	if !strings.Contains(stderr.String(), "parent process exited") {
		t.Errorf("stderr does not say why the helper left:\n%s", stderr.String())
	}
}
