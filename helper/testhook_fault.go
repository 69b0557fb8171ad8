package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/tsproc/tsproc/helper/internal/wire"
)

// Test-only fault injection. The host's tests set TSPROC_HELPER_FAULT to make a helper fail
// in one precise way, so that supervision (restart, heartbeat, version refusal, protocol
// error handling) can be tested against the real binary. It is read once, at start.
//
// None of it is in the control channel's code: when a fault is set, the session wraps the
// channel's reader (faultSource, which sees every request as it is read, hello included) and
// writer (faultSender, which every response and notification goes through). Without a fault
// the session uses internal/wire's reader and writer directly.
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

// errSilenced is what sends return after a hang_after fault has silenced the channel. It
// wraps wire.ErrWithheld, so that the dispatcher does not log every withheld answer.
var errSilenced = fmt.Errorf("control channel silenced by fault injection: %w", wire.ErrWithheld)

// faultSender is the writer of a channel with a fault: every message goes through it, so that
// garbage is never written inside a frame, and nothing at all once the channel is silenced.
type faultSender struct {
	f    fault
	w    *wire.MsgWriter
	conn *net.UnixConn // w's connection, for the garbage

	mu       sync.Mutex
	silenced bool
	hello    map[uint32]bool // ids of hello requests, whose answers protocol:<n> rewrites
	garbage  map[uint32]bool // ids of requests whose answers garbage_after follows
}

// Send writes m, rewriting or following it as the fault says.
func (s *faultSender) Send(m *wire.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.silenced {
		if m.FD >= 0 {
			unix.Close(m.FD)
		}
		return errSilenced
	}
	isResponse := m.Kind == wire.KindResponse
	if isResponse && s.hello[m.ID] && m.Err == nil && s.f.kind == faultProtocol {
		m.Result["protocol"] = s.f.protocol
	}
	err := s.w.Send(m)
	if isResponse && s.garbage[m.ID] {
		delete(s.garbage, m.ID)
		if err == nil {
			if _, err := s.conn.Write(garbageBytes()); err != nil {
				helperLogf("writing garbage: %v", err)
			}
		}
	}
	if isResponse {
		delete(s.hello, m.ID)
	}
	return err
}

// silence makes every later send fail without writing anything.
func (s *faultSender) silence() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.silenced = true
}

// expect notes a request as it is read, so that its answer can be rewritten or followed.
func (s *faultSender) expect(m *wire.Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m.Method == "hello" {
		s.hello[m.ID] = true
	}
	if s.f.kind == faultGarbageAfter && m.Method == s.f.method {
		s.garbage[m.ID] = true
	}
}

// faultSource is the reader of a channel with a fault: it acts on the fault's request as the
// request is read, before the dispatcher sees it.
type faultSource struct {
	wire.Source
	f    fault
	out  *faultSender
	exit func(code int) // os.Exit, replaced in tests
	stop chan struct{}  // closed by close: a hung reader returns
	once sync.Once
}

// Read returns the next message, unless the fault fires on it: exit_after exits, hang_after
// silences the channel and stops reading, the way a wedged helper would, until close.
func (r *faultSource) Read() (*wire.Message, error) {
	m, err := r.Source.Read()
	if err != nil || m.Kind != wire.KindRequest {
		return m, err
	}
	if m.Method == r.f.method {
		switch r.f.kind {
		case faultExitAfter:
			stderrLog.Log("error", "helper", "fault: exit_after:"+m.Method)
			r.exit(3)
			<-r.stop // only reached when a test replaced exit
			return nil, errSilenced
		case faultHangAfter:
			stderrLog.Log("error", "helper", "fault: hang_after:"+m.Method)
			r.out.silence()
			<-r.stop
			return nil, errSilenced
		case faultGarbageAfter:
			stderrLog.Log("error", "helper", "fault: garbage_after:"+m.Method)
		}
	}
	r.out.expect(m)
	return m, nil
}

// close ends a hung Read.
func (r *faultSource) close() { r.once.Do(func() { close(r.stop) }) }

// withFault wraps a channel's reader and writer (on conn) in f. With no fault it returns them
// as they are, and a no-op close.
func withFault(f fault, r *wire.MsgReader, w *wire.MsgWriter, conn *net.UnixConn) (wire.Source, wire.Sender, func()) {
	if f.kind == faultNone {
		return r, w, func() {}
	}
	out := &faultSender{f: f, w: w, conn: conn, hello: map[uint32]bool{}, garbage: map[uint32]bool{}}
	src := &faultSource{Source: r, f: f, out: out, exit: os.Exit, stop: make(chan struct{})}
	return src, out, src.close
}
