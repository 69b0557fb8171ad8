package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tsproc/tsproc/helper/internal/connrecord"
	"github.com/tsproc/tsproc/helper/internal/nolisten"
	"github.com/tsproc/tsproc/helper/internal/parentwatch"
	"github.com/tsproc/tsproc/helper/internal/wire"
)

// The node mode's process: its flags, the control channel on fds 0 and 1 (docs/protocol.md),
// the session that serves it, and how the process ends (docs/protocol.md §11). The node and its
// resources are node.go's.

const (
	// hostGoneGrace bounds the cleanup after the host went away (EOF, protocol error, parent
	// exit): docs/protocol.md §11 promises an exit within one second.
	hostGoneGrace = 800 * time.Millisecond
	// shutdownGrace bounds the cleanup after shutdown or a signal. It leaves room for tsnet
	// to log an ephemeral node out, which it tries for up to five seconds.
	shutdownGrace = 6 * time.Second
)

func runNode(args []string) int {
	fs := flag.NewFlagSet("node", flag.ContinueOnError)
	tsnetLogs := fs.Bool("tsnet-logs", true, "write tsnet's verbose backend log to stderr (level debug, source tsnet)")
	recordFD := fs.Int("conn-record-fd", -1, "an inherited fd of the host's shared connection record (internal/connrecord)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: tsproc-helper node [flags]\n\n"+
			"Speaks the tsproc protocol on fds 0 and 1, which must be one end of an AF_UNIX\n"+
			"socketpair. It is started by the tsproc Python library, not by hand.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2 // fs.Parse has printed the error and the usage
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return 2
	}

	flt, err := parseFault(os.Getenv(faultEnv))
	if err != nil {
		stderrLog.Log("error", "helper", err.Error())
		return 2
	}
	if flt.kind == faultExitAtStart {
		stderrLog.Log("error", "helper", "fault: exit_at_start")
		return 3
	}
	// No kernel listener, ever: the only way into the node is the tailnet (internal/nolisten).
	if err := nolisten.Forbid(); errors.Is(err, errors.ErrUnsupported) {
		helperLogf("host listeners are not forbidden here: %v", err)
	} else if err != nil {
		stderrLog.Log("warn", "helper", fmt.Sprintf("cannot forbid host listeners: %v", err))
	}

	parentGone := make(chan string, 1)
	parentwatch.Watch(func(reason string) {
		select {
		case parentGone <- reason:
		default:
		}
	})

	rd, wr, err := stdioChannel()
	if err != nil {
		stderrLog.Log("error", "helper", fmt.Sprintf("control channel: %v", err))
		return 1
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)

	adaptProcs()
	sess := newSession(rd, wr, flt, *tsnetLogs)
	if *recordFD >= 0 {
		// Without it the host still resets the peers of every connection it was handed.
		rec, err := connrecord.Open(*recordFD)
		if err != nil {
			stderrLog.Log("warn", "helper", fmt.Sprintf("connections not yet handed over will not be reset after a crash: %v", err))
		}
		sess.node.record = rec
	}
	served := make(chan error, 1)
	go func() { served <- sess.serve() }()
	helperLogf("tsproc-helper %s (tailscale %s, protocol %d) serving, pid %d",
		helperVersion, tailscaleVersion(), wire.ProtocolVersion, os.Getpid())

	select {
	case err := <-served:
		if err != nil {
			stderrLog.Log("error", "helper", fmt.Sprintf("control channel: %v; exiting", err))
			sess.closeWithin(hostGoneGrace)
			return 1
		}
		helperLogf("control channel closed by the host; exiting")
		sess.closeWithin(hostGoneGrace)
		return 0
	case reason := <-parentGone:
		stderrLog.Log("warn", "helper", reason+"; exiting")
		sess.closeWithin(hostGoneGrace)
		return 1
	case sig := <-sigs:
		helperLogf("received %v; shutting down", sig)
		sess.closeWithin(shutdownGrace)
		return 0
	case <-sess.node.shutdownRequested():
		helperLogf("shutdown requested; shutting down")
		sess.closeWithin(shutdownGrace)
		return 0
	}
}

// stdioChannel returns the control channel: fd 0 for reading and fd 1 for writing (the host
// makes both the same socket). Fds 0 and 1 are then pointed at /dev/null and
// stderr, so that nothing else in the process — a stray print in a dependency — can write
// into the protocol stream, and so that closing the returned conns really closes the channel.
func stdioChannel() (rd, wr *net.UnixConn, err error) {
	rd, err = unixConnFromFile(os.Stdin)
	if err != nil {
		return nil, nil, fmt.Errorf("fd 0: %w", err)
	}
	wr, err = unixConnFromFile(os.Stdout)
	if err != nil {
		rd.Close()
		return nil, nil, fmt.Errorf("fd 1: %w", err)
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, nil, err
	}
	defer devnull.Close()
	if err := unix.Dup2(int(devnull.Fd()), 0); err != nil {
		return nil, nil, fmt.Errorf("detaching fd 0: %w", err)
	}
	if err := unix.Dup2(2, 1); err != nil {
		return nil, nil, fmt.Errorf("detaching fd 1: %w", err)
	}
	return rd, wr, nil
}

// unixConnFromFile returns a UnixConn on a duplicate of f's fd.
func unixConnFromFile(f *os.File) (*net.UnixConn, error) {
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("not a socket: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("not an AF_UNIX socket but %T", c)
	}
	return uc, nil
}

// session is one control channel with its node: the unit runNode runs and the tests drive.
type session struct {
	rd, wr     *net.UnixConn
	r          wire.Source
	node       *node
	disp       *wire.Dispatcher
	closeFault func() // ends a hung fault reader
}

// newSession serves the protocol reading from rd and writing to wr, which may be the same
// connection. It takes ownership of both. A fault other than faultNone wraps the channel
// (testhook_fault.go).
func newSession(rd, wr *net.UnixConn, f fault, tsnetLogs bool) *session {
	r, w, closeFault := withFault(f, wire.NewMsgReader(rd), wire.NewMsgWriter(wr), wr)
	n := newNode(w, tsnetLogs)
	disp := wire.NewDispatcher(n, w, dispatcherConfig())
	n.host = disp // a host state store's calls (start's host_state)
	return &session{
		rd:         rd,
		wr:         wr,
		r:          r,
		node:       n,
		disp:       disp,
		closeFault: closeFault,
	}
}

// dispatcherConfig is what this helper says about itself in hello.
func dispatcherConfig() wire.Config {
	return wire.Config{HelperVersion: helperVersion, TailscaleVersion: tailscaleVersion(), Logf: helperLogf}
}

// serve reads the channel until the host closes it (nil) or breaks the protocol.
func (s *session) serve() error { return s.disp.Serve(s.r) }

// close ends everything: request handlers, listeners, connections, the tsnet server and the
// channel.
func (s *session) close() {
	s.disp.Cancel() // unblocks handlers waiting on tsnet (up, dial) first
	s.closeFault()
	s.node.close()
	// Closing the channel before waiting for the handlers unblocks any that is writing to
	// a host that no longer reads.
	s.rd.Close()
	s.wr.Close()
	s.disp.Close()
}

// closeWithin is close bounded by d: the process exits right after, so whatever has not
// finished by then is cut short by the exit.
func (s *session) closeWithin(d time.Duration) {
	done := make(chan struct{})
	go func() {
		s.close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(d):
		stderrLog.Log("warn", "helper", fmt.Sprintf("cleanup did not finish within %v; exiting anyway", d))
	}
}
