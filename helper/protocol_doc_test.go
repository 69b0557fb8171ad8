package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"maps"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/tsproc/tsproc/helper/internal/wire"
)

// docs/protocol.md is the wire contract: these tests keep its method table (§4) and its
// error codes (§8) in step with the helper's method table and internal/wire's codes.
// tests/test_protocol_doc.py holds the host's side to the same tables.

var backticked = regexp.MustCompile("`([a-z_]+)`")

// protocolDocSection returns the table rows (lines starting with "| `") of the section of
// docs/protocol.md whose heading starts with heading, split into cells.
func protocolDocSection(t *testing.T, heading string) [][]string {
	t.Helper()
	doc, err := os.ReadFile("../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "\n"+heading)
	if !ok {
		t.Fatalf("docs/protocol.md has no section %q", heading)
	}
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end]
	}
	var rows [][]string
	for line := range strings.Lines(section) {
		if strings.HasPrefix(line, "| `") {
			cells := strings.Split(strings.Trim(strings.TrimSpace(line), "|"), " | ")
			rows = append(rows, cells)
		}
	}
	if len(rows) == 0 {
		t.Fatalf("docs/protocol.md section %q has no table", heading)
	}
	return rows
}

// docMethods maps each method of docs/protocol.md §4's table (the host's requests; the
// notification tables have no params/result columns) to its params cell.
func docMethods(t *testing.T) map[string]string {
	out := map[string]string{}
	for _, cells := range protocolDocSection(t, "## 4. Methods") {
		if len(cells) != 4 {
			continue // the host's notifications: method, params, meaning
		}
		m := backticked.FindStringSubmatch(cells[0])
		out[m[1]] = cells[1]
	}
	return out
}

// wireErrorCodes reads the Code* constants of internal/wire/errors.go.
func wireErrorCodes(t *testing.T) []string {
	f, err := parser.ParseFile(token.NewFileSet(), "internal/wire/errors.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var codes []string
	ast.Inspect(f, func(node ast.Node) bool {
		spec, ok := node.(*ast.ValueSpec)
		if !ok || !strings.HasPrefix(spec.Names[0].Name, "Code") {
			return true
		}
		code, err := strconv.Unquote(spec.Values[0].(*ast.BasicLit).Value)
		if err != nil {
			t.Fatal(err)
		}
		codes = append(codes, code)
		return true
	})
	slices.Sort(codes)
	return codes
}

func TestProtocolDocMatchesMethods(t *testing.T) {
	got := slices.Sorted(maps.Keys(docMethods(t)))
	// hello is answered by the dispatcher itself; bench_echo is the benchmarks' alone
	// (testhook_benchecho.go) and unknown to every other host.
	want := []string{"hello"}
	for m := range methods {
		if m != "bench_echo" {
			want = append(want, m)
		}
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("docs/protocol.md §4 lists methods\n%v\nthe helper has\n%v", got, want)
	}
}

func TestProtocolDocMatchesErrorCodes(t *testing.T) {
	var doc []string
	for _, cells := range protocolDocSection(t, "## 8. Errors") {
		for _, m := range backticked.FindAllStringSubmatch(cells[0], -1) {
			doc = append(doc, m[1])
		}
	}
	slices.Sort(doc)
	codes := wireErrorCodes(t)
	if !slices.Equal(doc, codes) {
		t.Errorf("docs/protocol.md §8 lists codes\n%v\ninternal/wire has\n%v", doc, codes)
	}
	// Every code a method's row names is one of them.
	for _, cells := range protocolDocSection(t, "## 4. Methods") {
		if len(cells) != 4 {
			continue
		}
		for _, m := range backticked.FindAllStringSubmatch(cells[3], -1) {
			if !slices.Contains(codes, m[1]) {
				t.Errorf("docs/protocol.md §4 row %s names the unknown error code %q", cells[0], m[1])
			}
		}
	}
}

// TestProtocolDocTimeouts: every method that waits takes the caller's time as timeout_ms, the
// table says which, and the helper refuses a call of those without it (and only of those).
func TestProtocolDocTimeouts(t *testing.T) {
	doc := docMethods(t)
	for _, m := range []string{"up", "dial", "dial_udp", "ping_peer", "status", "whois", "logout",
		"cert_domains", "cert_pair", "listen_tls", "listen_funnel"} {
		if !strings.Contains(doc[m], "`timeout_ms`") {
			t.Errorf("docs/protocol.md §4: %s waits in the helper but lists no timeout_ms", m)
		}
	}
	h, _ := startTestSession(t)
	for m, params := range doc {
		if m == "hello" || m == "shutdown" {
			continue // the handshake is done; shutdown would end the session
		}
		reply := h.Call(m, map[string]any{})
		refused := reply.Err != nil && reply.Err.Code == wire.CodeBadRequest &&
			strings.Contains(reply.Err.Message, `"timeout_ms"`)
		if want := strings.Contains(params, "`timeout_ms`"); refused != want {
			t.Errorf("%s without timeout_ms: got %+v; docs/protocol.md says timeout_ms: %v", m, reply.Err, want)
		}
	}
}
