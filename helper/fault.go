package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Test-only fault injection. The host's tests set TSPROC_HELPER_FAULT to make a helper fail
// in one precise way, so that supervision (restart, heartbeat, version refusal, protocol
// error handling) can be tested against the real binary. It is read once, at start.
const faultEnv = "TSPROC_HELPER_FAULT"

type faultKind int

const (
	faultNone         faultKind = iota
	faultExitAtStart            // exit_at_start: log "fault: exit_at_start", exit 3 before reading
	faultExitAfter              // exit_after:<method>: exit 3 on receiving that request
	faultHangAfter              // hang_after:<method>: stop reading and writing, do not exit
	faultGarbageAfter           // garbage_after:<method>: answer it, then write a broken frame
	faultProtocol               // protocol:<n>: answer hello claiming protocol n
)

type fault struct {
	kind     faultKind
	method   string // for the *_after kinds
	protocol uint64 // for faultProtocol
}

// generationEnv is set by the host to this helper's generation number (1 for the first helper
// of a node, 2 after the first restart …), so a fault can hit one generation and spare the
// helper that replaces it.
const generationEnv = "TSPROC_HELPER_GENERATION"

// parseFault parses the value of TSPROC_HELPER_FAULT; "" is no fault. A suffix "@N" limits the
// fault to generation N, "@N+" to generation N and later.
func parseFault(v string) (fault, error) {
	if v == "" {
		return fault{}, nil
	}
	if spec, gens, ok := strings.Cut(v, "@"); ok {
		from, orLater := strings.CutSuffix(gens, "+")
		n, err := strconv.ParseUint(from, 10, 32)
		if err != nil || n == 0 {
			return fault{}, fmt.Errorf("%s=%q: the generation after @ must be N or N+ (N >= 1)", faultEnv, v)
		}
		gen, _ := strconv.ParseUint(os.Getenv(generationEnv), 10, 32)
		if gen == 0 {
			gen = 1
		}
		if gen < n || (gen > n && !orLater) {
			// Still parse the spec, so a typo fails in every generation, not just the target.
			if _, err := parseFault(spec); err != nil {
				return fault{}, err
			}
			return fault{}, nil
		}
		v = spec
	}
	if v == "exit_at_start" {
		return fault{kind: faultExitAtStart}, nil
	}
	name, arg, ok := strings.Cut(v, ":")
	if !ok || arg == "" {
		return fault{}, fmt.Errorf("unknown %s value %q", faultEnv, v)
	}
	switch name {
	case "exit_after":
		return fault{kind: faultExitAfter, method: arg}, nil
	case "hang_after":
		return fault{kind: faultHangAfter, method: arg}, nil
	case "garbage_after":
		return fault{kind: faultGarbageAfter, method: arg}, nil
	case "protocol":
		n, err := strconv.ParseUint(arg, 10, 32)
		if err != nil {
			return fault{}, fmt.Errorf("%s=%q: protocol must be an unsigned integer", faultEnv, v)
		}
		return fault{kind: faultProtocol, protocol: n}, nil
	}
	return fault{}, fmt.Errorf("unknown %s value %q", faultEnv, v)
}

// garbageBytes is what garbage_after writes: a frame header claiming 0xFFFFFFFF bytes (over
// the 1 MiB cap, so the host must refuse it without allocating) and 60 bytes of junk.
func garbageBytes() []byte {
	b := make([]byte, 64)
	for i := range b {
		b[i] = 0xFF
	}
	copy(b[4:], "tsproc-helper fault injection: this is not a frame")
	return b
}
