package wire_test

import (
	"bytes"
	"os"
	"slices"
	"testing"

	"github.com/tsproc/tsproc/helper/internal/wire"
	"github.com/tsproc/tsproc/helper/internal/wire/wiretest"
)

// TestWriteFuzzCorpus writes the seed corpus of FuzzDecode into testdata/fuzz. It only runs
// when TSPROC_WRITE_FUZZ_CORPUS=1.
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("TSPROC_WRITE_FUZZ_CORPUS") != "1" {
		t.Skip("set TSPROC_WRITE_FUZZ_CORPUS=1 to rewrite testdata/fuzz")
	}
	wiretest.WriteCorpus(t, "FuzzDecode", decodeSeeds(t))
}

func decodeSeeds(t *testing.T) []wiretest.Seed {
	var seeds []wiretest.Seed
	hello := wiretest.Req(t, 1, "hello", map[string]any{"protocol": 1})
	valid := slices.Concat(
		hello,
		wiretest.SeedFrame(t, wire.NewNotification("grant", map[string]any{"listener": 1, "n": 2})),
		wiretest.SeedFrame(t, wire.NewResponse(3, map[string]any{"conn": uint64(7), "fd": true}, nil)),
		wiretest.SeedFrame(t, wire.NewResponse(4, nil, &wire.Error{Code: "timeout", Message: "slow"})),
		wiretest.Req(t, 5, "dial", map[string]any{"network": "tcp", "host": "a", "port": 80, "timeout_ms": 10, "f": 1.5, "b": []byte{1}}),
	)
	// Whole stream in one read, byte by byte, fds before, with and after their frames.
	seeds = append(seeds,
		wiretest.SeedFile("valid-one-read", valid, []byte{}),
		wiretest.SeedFile("valid-byte-by-byte", valid, bytes.Repeat([]byte{0x01}, 64)),
		wiretest.SeedFile("valid-fd-first", valid, []byte{0x40, 0x3f, 0x3f}),
		wiretest.SeedFile("valid-fd-late", valid, []byte{0x3f, 0x3f, 0x3f, 0x40}),
		wiretest.SeedFile("fds-unclaimed", hello, []byte{0xc0, 0xc0, 0xc0, 0xc0, 0xc0}),
		wiretest.SeedFile("fd-flag-no-fd", wiretest.SeedFrame(t, wire.NewNotification("accepted", map[string]any{"fd": true})), []byte{}),
		wiretest.SeedFile("body-only-request", hello[4:], []byte{}),
	)
	for name, f := range wiretest.HostileFrames(t) {
		seeds = append(seeds, wiretest.SeedFile("hostile-"+name, slices.Concat(hello, f), []byte{0x05, 0x41}))
	}
	return seeds
}
