package codepages

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

func rssFileKB(t *testing.T) int {
	t.Helper()
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "RssFile:"); ok {
			kb, err := strconv.Atoi(strings.Fields(rest)[0])
			if err != nil {
				t.Fatal(err)
			}
			return kb
		}
	}
	t.Fatal("no RssFile in /proc/self/status")
	return 0
}

// TestRelease: the test binary's read-only pages are unmapped (its file-backed RSS falls),
// and the program goes on running from the page cache (this test returns).
func TestRelease(t *testing.T) {
	before := rssFileKB(t)
	got, err := Release()
	if err != nil {
		t.Fatal(err)
	}
	after := rssFileKB(t)
	if got == 0 {
		t.Fatal("no read-only mapping of the executable was found")
	}
	if after >= before {
		t.Fatalf("RssFile %d kB before, %d kB after releasing %d bytes", before, after, got)
	}
	t.Logf("released %d bytes of mappings: RssFile %d kB -> %d kB", got, before, after)
}

func TestReadOnlyMappingOf(t *testing.T) {
	const exe = "/usr/bin/x"
	tests := []struct {
		line string
		ok   bool
	}{
		{"00400000-00a00000 r-xp 00000000 08:01 42 /usr/bin/x", true},
		{"00a00000-01000000 r--p 00600000 08:01 42 /usr/bin/x", true},
		{"01000000-01100000 rw-p 00c00000 08:01 42 /usr/bin/x", false}, // data: written to
		{"01000000-01100000 r--s 00c00000 08:01 42 /usr/bin/x", false}, // shared
		{"00400000-00a00000 r-xp 00000000 08:01 43 /usr/bin/y", false},
		{"7ffd0000-7ffd1000 r-xp 00000000 00:00 0 [vdso]", false},
		{"01100000-01200000 rw-p 00000000 00:00 0", false},
		{"zz-01000000 r--p 00000000 08:01 42 /usr/bin/x", false},
	}
	for _, tt := range tests {
		if _, _, ok := readOnlyMappingOf(tt.line, exe); ok != tt.ok {
			t.Errorf("%q: got %v, want %v", tt.line, ok, tt.ok)
		}
	}
}
