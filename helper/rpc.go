package main

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// The msgpack-RPC layer of docs/protocol.md: one serialized writer, and a dispatcher that
// enforces the hello handshake, runs each request in its own goroutine under an in-flight
// bound, and hands notifications to the service. It knows nothing of tsnet.

// maxInFlight bounds the requests being handled at once (docs/protocol.md §9).
const maxInFlight = 1024

// errSilenced is what sends return after a hang_after fault has silenced the channel.
var errSilenced = errors.New("control channel silenced by fault injection")

// msgWriter is the single writer of the control channel. Every frame goes out whole and
// alone, so frames never interleave and a frame's fd travels with its first byte.
type msgWriter struct {
	mu       sync.Mutex
	conn     *net.UnixConn
	err      error // the first write error; every later send fails with it
	silenced bool
}

func newMsgWriter(conn *net.UnixConn) *msgWriter { return &msgWriter{conn: conn} }

// send writes m, passing m.fd if it is >= 0. It takes ownership of m.fd and closes it once
// the frame is written or has failed: the host holds its own copy from then on.
func (w *msgWriter) send(m *message) error {
	if m.fd >= 0 {
		defer unix.Close(m.fd)
	}
	frame, err := encodeFrame(m)
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.silenced:
		return errSilenced
	case w.err != nil:
		return w.err
	}
	if err := sendFrame(w.conn, frame, m.fd); err != nil {
		w.err = err
		return err
	}
	return nil
}

// notify sends a notification; fd (or -1) as for send.
func (w *msgWriter) notify(method string, params map[string]any, fd int) error {
	m := newNotification(method, params)
	m.fd = fd
	return w.send(m)
}

// writeRaw writes bytes that are not a frame. Only fault injection uses it.
func (w *msgWriter) writeRaw(b []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil || w.silenced {
		return nil
	}
	_, err := w.conn.Write(b)
	return err
}

// silence makes every later send fail without writing anything.
func (w *msgWriter) silence() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.silenced = true
}

// reply is a successful handler's answer.
type reply struct {
	result map[string]any
	// fd, if >= 0, is passed with the response (whose result says "fd": true) and then
	// closed by the writer.
	fd int
	// after, if set, runs once the response has been written (sent is true) or could not
	// be (sent is false). Hand-overs use it to start pumping only after the host has the fd,
	// so that no conn_end can overtake the response that introduces the conn.
	after func(sent bool)
}

// okReply is a reply with result and no fd.
func okReply(result map[string]any) *reply { return &reply{result: result, fd: -1} }

// service is what the dispatcher serves: the node, or a fake in tests.
type service interface {
	// call handles one request. An error that is not an *rpcError is sent as internal.
	call(ctx context.Context, method string, params map[string]any) (*reply, error)
	// notification handles a host notification. It must not block.
	notification(method string, params map[string]any)
}

// dispatcher reads requests and notifications and answers them.
type dispatcher struct {
	svc   service
	w     *msgWriter
	fault fault
	exit  func(code int) // os.Exit, replaced in tests

	ctx    context.Context // cancelled by close; handlers get it
	cancel context.CancelFunc
	wg     sync.WaitGroup // request goroutines

	mu        sync.Mutex
	inFlight  int
	helloDone bool
	closed    bool // no new request goroutines
}

func newDispatcher(svc service, w *msgWriter, f fault) *dispatcher {
	ctx, cancel := context.WithCancel(context.Background())
	return &dispatcher{svc: svc, w: w, fault: f, exit: os.Exit, ctx: ctx, cancel: cancel}
}

// serve reads messages from r until the stream ends (nil), a protocol or read error
// (returned), or close. Request handlers may still be running when it returns.
func (d *dispatcher) serve(r *msgReader) error {
	defer r.in.closeAll()
	for {
		m, err := r.read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if hang := d.handle(m); hang {
			// hang_after fault: stop reading and stay silent, but live on, the way a
			// wedged helper would, until the process is killed (or a test closes us).
			<-d.ctx.Done()
			return d.ctx.Err()
		}
	}
}

// handle processes one message. It returns true if a hang_after fault fired.
func (d *dispatcher) handle(m *message) (hang bool) {
	if m.fd >= 0 {
		// No host message of protocol version 1 carries an fd; the inbox already matched
		// it to this message, so it is ours to close.
		unix.Close(m.fd)
		m.fd = -1
	}
	switch m.kind {
	case kindNotification:
		if d.isHelloDone() {
			d.svc.notification(m.method, m.params)
		}
		return false
	case kindResponse:
		helperLogf("ignoring a response to id %d: the helper sends no requests", m.id)
		return false
	}

	garbage := false
	if d.fault.method == m.method {
		switch d.fault.kind {
		case faultExitAfter:
			stderrLog.log("error", "helper", "fault: exit_after:"+m.method)
			d.exit(3)
			return true // only reached when a test replaced exit
		case faultHangAfter:
			stderrLog.log("error", "helper", "fault: hang_after:"+m.method)
			d.w.silence()
			return true
		case faultGarbageAfter:
			stderrLog.log("error", "helper", "fault: garbage_after:"+m.method)
			garbage = true
		}
	}

	if m.method == "hello" {
		// Inline, so that every request read after the hello sees its outcome.
		d.respond(m.id, d.hello(m.params), garbage)
		return false
	}
	if !d.isHelloDone() {
		d.respond(m.id, result{err: newError(codeBadRequest, "the first request must be hello")}, garbage)
		return false
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return false
	}
	if d.inFlight >= maxInFlight {
		d.mu.Unlock()
		d.respond(m.id, result{err: newError(codeLimit, "more than %d requests in flight", maxInFlight)}, garbage)
		return false
	}
	d.inFlight++
	d.wg.Add(1) // under mu, so never after close has started waiting
	d.mu.Unlock()
	go func() {
		defer d.wg.Done()
		defer func() {
			d.mu.Lock()
			d.inFlight--
			d.mu.Unlock()
		}()
		rep, err := d.svc.call(d.ctx, m.method, m.params)
		d.respond(m.id, result{rep: rep, err: err}, garbage)
	}()
	return false
}

func (d *dispatcher) isHelloDone() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.helloDone
}

// hello answers the handshake (docs/protocol.md §3).
func (d *dispatcher) hello(params map[string]any) result {
	pr := newParamReader(params)
	asked := pr.uint("protocol", 0, 1<<32-1)
	if pr.err != nil {
		return result{err: pr.err}
	}
	if asked != protocolVersion {
		return result{err: newError(codeUnsupportedProtocol,
			"helper speaks protocol %d, host asked for %d", protocolVersion, asked)}
	}
	claimed := uint64(protocolVersion)
	if d.fault.kind == faultProtocol {
		claimed = d.fault.protocol
	}
	d.mu.Lock()
	d.helloDone = true
	d.mu.Unlock()
	return result{rep: okReply(map[string]any{
		"protocol":          claimed,
		"helper_version":    helperVersion,
		"tailscale_version": tailscaleVersion(),
		"pid":               uint64(os.Getpid()),
	})}
}

// result is a handler's outcome: a reply, or an error.
type result struct {
	rep *reply
	err error
}

// respond writes the response for request id and runs the reply's after hook.
func (d *dispatcher) respond(id uint32, res result, garbage bool) {
	var m *message
	if res.err != nil {
		m = newResponse(id, nil, asRPCError(res.err))
		if res.rep != nil && res.rep.fd >= 0 {
			unix.Close(res.rep.fd)
		}
	} else {
		m = newResponse(id, res.rep.result, nil)
		m.fd = res.rep.fd
	}
	err := d.w.send(m)
	sent := err == nil
	if errors.Is(err, errFrameTooLarge) {
		// The answer does not fit in a frame (a status of thousands of peers, say): the
		// host gets a limit error now rather than no answer at all. Any fd is closed.
		err = d.w.send(newResponse(id, nil, newError(codeLimit, "%v", err)))
	}
	if err != nil && !errors.Is(err, errSilenced) {
		helperLogf("writing response %d: %v", id, err)
	}
	if res.err == nil && res.rep.after != nil {
		res.rep.after(sent)
	}
	if garbage {
		if err := d.w.writeRaw(garbageBytes()); err != nil {
			helperLogf("writing garbage: %v", err)
		}
	}
}

// close cancels every running handler and waits for them to return. Requests read after
// it has begun are dropped.
func (d *dispatcher) close() {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	d.cancel()
	d.wg.Wait()
}
