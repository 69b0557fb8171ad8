package main

import (
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tsproc/tsproc/helper/internal/fdtest"
	"github.com/tsproc/tsproc/helper/internal/wire"
	"github.com/tsproc/tsproc/helper/internal/wire/wiretest"
)

// startTestSession serves a node (without tsnet until start) on a socketpair and returns the
// host side, already past hello.
func startTestSession(t *testing.T) (*wiretest.Host, *session) {
	t.Helper()
	helperEnd, hostEnd := fdtest.UnixPair(t)
	sess := newSession(helperEnd, helperEnd, fault{}, false)
	served := make(chan error, 1)
	go func() { served <- sess.serve() }()
	t.Cleanup(func() {
		sess.close()
		select {
		case <-served:
		case <-time.After(5 * time.Second):
			t.Error("session did not stop serving")
		}
	})
	h := wiretest.NewHost(t, hostEnd)
	h.Hello()
	return h, sess
}

func TestNodeBeforeStart(t *testing.T) {
	h, _ := startTestSession(t)
	tests := []struct {
		method   string
		params   map[string]any
		wantCode string
	}{
		{"ping", map[string]any{}, ""},
		{"status", map[string]any{"timeout_ms": 1000}, wire.CodeNotStarted},
		{"up", map[string]any{"timeout_ms": 10}, wire.CodeNotStarted},
		{"up", map[string]any{}, wire.CodeBadRequest},
		{"logout", map[string]any{"timeout_ms": 1000}, wire.CodeNotStarted},
		{"whois", map[string]any{"addr": "100.64.0.1", "timeout_ms": 1000}, wire.CodeNotStarted},
		{"whois", map[string]any{"addr": "not an address", "timeout_ms": 1000}, wire.CodeBadRequest},
		{"listen", map[string]any{"network": "tcp", "port": 80}, wire.CodeNotRunning},
		{"listen", map[string]any{"network": "udp", "port": 80}, wire.CodeBadRequest},
		{"listen", map[string]any{"network": "tcp", "port": 80, "backlog": 0}, wire.CodeBadRequest},
		{"listen", map[string]any{"network": "tcp", "port": 80, "backlog": 4097}, wire.CodeBadRequest},
		{"close_listener", map[string]any{"listener": 1}, wire.CodeNotFound},
		{"dial", map[string]any{"network": "tcp", "host": "a", "port": 1, "timeout_ms": 10}, wire.CodeNotRunning},
		{"dial", map[string]any{"network": "tcp", "host": "", "port": 1, "timeout_ms": 10}, wire.CodeBadRequest},
		{"dial", map[string]any{"network": "tcp", "host": "a", "port": 1}, wire.CodeBadRequest},
		{"no_such_method", map[string]any{}, wire.CodeUnknownMethod},
	}
	for _, tt := range tests {
		m := h.Call(tt.method, tt.params)
		if wiretest.ErrCode(m) != tt.wantCode {
			t.Errorf("%s %v: got %+v, want %q", tt.method, tt.params, m.Err, tt.wantCode)
		}
	}
}

func TestParseStart(t *testing.T) {
	dir := t.TempDir()
	valid := map[string]any{
		"hostname":  "my-node-1",
		"state_dir": dir,
		"ephemeral": false,
		"tags":      []any{"tag:web", "tag:db-2"},
	}
	with := func(k string, v any) map[string]any {
		p := maps.Clone(valid)
		if v == nil {
			delete(p, k)
		} else {
			p[k] = v
		}
		return p
	}
	tests := []struct {
		name    string
		params  map[string]any
		wantErr string // substring of the bad_request message; "" for valid
	}{
		{"valid", valid, ""},
		{"valid with everything", with("control_url", "https://ctl.example.com:8443/x"), ""},
		{"memory state with ephemeral", func() map[string]any {
			p := with("ephemeral", true)
			p["memory_state"] = true
			return p
		}(), ""},
		{"hostname missing", with("hostname", nil), `"hostname" is required`},
		{"hostname empty", with("hostname", ""), `"hostname" must be 1 to 63`},
		{"hostname leading hyphen", with("hostname", "-a"), `"hostname" must be 1 to 63`},
		{"hostname trailing hyphen", with("hostname", "a-"), `"hostname"`},
		{"hostname dot", with("hostname", "a.b"), `"hostname"`},
		{"hostname underscore", with("hostname", "a_b"), `"hostname"`},
		{"hostname 63", with("hostname", strings.Repeat("a", 63)), ""},
		{"hostname 64", with("hostname", strings.Repeat("a", 64)), `"hostname"`},
		{"hostname not a string", with("hostname", int64(5)), `"hostname" must be a string`},
		{"state_dir relative", with("state_dir", "rel/dir"), `"state_dir" must be an absolute path`},
		{"state_dir missing", with("state_dir", nil), `"state_dir" is required`},
		{"ephemeral missing", with("ephemeral", nil), `"ephemeral" is required`},
		{"ephemeral not bool", with("ephemeral", "yes"), `"ephemeral" must be a bool`},
		{"tags missing is empty", with("tags", nil), ""},
		{"tag without prefix", with("tags", []any{"web"}), `"tags"`},
		{"tag bad char", with("tags", []any{"tag:a_b"}), `"tags"`},
		{"tags not a list", with("tags", "tag:a"), `"tags" must be a list`},
		{"tag not a string", with("tags", []any{int64(1)}), `"tags" element 0`},
		{"memory state without ephemeral", with("memory_state", true), `"memory_state"`},
		{"control_url ftp", with("control_url", "ftp://x"), `"control_url"`},
		{"control_url no host", with("control_url", "http://"), `"control_url"`},
		{"control_url junk", with("control_url", "::"), `"control_url"`},
		{"auth_key not a string", with("auth_key", int64(3)), `"auth_key" must be a string`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseStart(wire.NewParamReader(tt.params))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			re, ok := err.(*wire.Error)
			if !ok || re.Code != wire.CodeBadRequest || !strings.Contains(re.Message, tt.wantErr) {
				t.Fatalf("err = %v, want bad_request containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestStartStateDir(t *testing.T) {
	h, _ := startTestSession(t)
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	m := h.Call("start", map[string]any{"hostname": "a", "state_dir": file, "ephemeral": true})
	if wiretest.ErrCode(m) != wire.CodeBadRequest || !strings.Contains(m.Err.Message, `"state_dir"`) {
		t.Fatalf("start with a file as state_dir: %+v", m.Err)
	}
}

func TestIsLoopbackURL(t *testing.T) {
	tests := []struct {
		url  string
		want bool
	}{
		{"http://127.0.0.1:8080", true},
		{"http://[::1]:80/", true},
		{"http://localhost:9", true},
		{"https://controlplane.tailscale.com", false},
		{"http://10.0.0.1", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := isLoopbackURL(tt.url); got != tt.want {
			t.Errorf("isLoopbackURL(%q) = %v, want %v", tt.url, got, tt.want)
		}
	}
}
