package wire

import (
	"context"
	"errors"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// The msgpack-RPC layer of docs/protocol.md: a dispatcher that enforces the hello handshake,
// runs each request in its own goroutine under an in-flight bound, and hands notifications to
// the service.

// ProtocolVersion is the version of docs/protocol.md this helper speaks.
const ProtocolVersion = 1

// MaxInFlight bounds the requests being handled at once (docs/protocol.md §9).
const MaxInFlight = 1024

// Reply is a successful handler's answer.
type Reply struct {
	Result map[string]any
	// FD, if >= 0, is passed with the response (whose result says "fd": true) and then
	// closed by the writer.
	FD int
	// After, if set, runs once the response has been written (sent is true) or could not
	// be (sent is false). Hand-overs use it to start pumping only after the host has the fd,
	// so that no conn_end can overtake the response that introduces the conn.
	After func(sent bool)
}

// OKReply is a reply with result and no fd.
func OKReply(result map[string]any) *Reply { return &Reply{Result: result, FD: -1} }

// Service is what the dispatcher serves: the node, or a fake in tests.
type Service interface {
	// Call handles one request. An error that is not an *Error is sent as internal.
	Call(ctx context.Context, method string, params map[string]any) (*Reply, error)
	// Notification handles a host notification. It must not block.
	Notification(method string, params map[string]any)
}

// Source is what the dispatcher reads: a *MsgReader, or a wrapper around one.
type Source interface {
	// Read returns the next message, io.EOF at a clean end of the stream, or a final error.
	Read() (*Message, error)
	// CloseFDs closes every fd received and not yet claimed.
	CloseFDs()
}

// Config is what the dispatcher says about the helper in the hello answer, and where it logs.
type Config struct {
	HelperVersion    string
	TailscaleVersion string
	Logf             func(format string, args ...any)
}

// Dispatcher reads requests and notifications and answers them.
type Dispatcher struct {
	svc Service
	w   Sender
	cfg Config

	ctx    context.Context // cancelled by Cancel and Close; handlers get it
	cancel context.CancelFunc
	wg     sync.WaitGroup // request goroutines

	calls calls // requests from the helper to the host (calls.go)

	mu        sync.Mutex
	inFlight  int
	helloDone bool
	closed    bool // no new request goroutines
}

// NewDispatcher returns a dispatcher that serves svc and answers through w.
func NewDispatcher(svc Service, w Sender, cfg Config) *Dispatcher {
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Dispatcher{svc: svc, w: w, cfg: cfg, ctx: ctx, cancel: cancel}
}

// Serve reads messages from r until the stream ends (nil), a protocol or read error
// (returned), or Close. Request handlers may still be running when it returns.
func (d *Dispatcher) Serve(r Source) error {
	defer r.CloseFDs()
	defer d.calls.end() // no answer can come any more
	for {
		m, err := r.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		d.handle(m)
	}
}

// handle processes one message.
func (d *Dispatcher) handle(m *Message) {
	// A request's fd (forward passes a listening socket) goes to its handler as a
	// *ReceivedFD in params["fd"]; whatever the handler does not take is closed here. No
	// notification or response carries one: the inbox matched it to this message, so it
	// is ours to close.
	var passed *ReceivedFD
	if m.FD >= 0 {
		if m.Kind == KindRequest {
			passed = &ReceivedFD{fd: m.FD}
			m.Params["fd"] = passed
		} else {
			unix.Close(m.FD)
		}
		m.FD = -1
	}
	handedOff := false
	defer func() {
		if !handedOff {
			passed.close()
		}
	}()
	switch m.Kind {
	case KindNotification:
		if d.isHelloDone() {
			d.svc.Notification(m.Method, m.Params)
		}
		return
	case KindResponse:
		if !d.calls.deliver(m) {
			// A call given up (its deadline passed) before the host answered.
			d.cfg.Logf("ignoring a response to id %d: no call of the helper waits for it", m.ID)
		}
		return
	}

	if m.Method == "hello" {
		// Inline, so that every request read after the hello sees its outcome.
		d.respond(m.ID, d.hello(m.Params))
		return
	}
	if !d.isHelloDone() {
		d.respond(m.ID, result{err: NewError(CodeBadRequest, "the first request must be hello")})
		return
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	if d.inFlight >= MaxInFlight {
		d.mu.Unlock()
		d.respond(m.ID, result{err: NewError(CodeLimit, "more than %d requests in flight", MaxInFlight)})
		return
	}
	d.inFlight++
	d.wg.Add(1) // under mu, so never after close has started waiting
	d.mu.Unlock()
	handedOff = true
	go func() {
		defer d.wg.Done()
		defer passed.close()
		defer func() {
			d.mu.Lock()
			d.inFlight--
			d.mu.Unlock()
		}()
		rep, err := d.svc.Call(d.ctx, m.Method, m.Params)
		d.respond(m.ID, result{rep: rep, err: err})
	}()
}

func (d *Dispatcher) isHelloDone() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.helloDone
}

// hello answers the handshake (docs/protocol.md §3).
func (d *Dispatcher) hello(params map[string]any) result {
	pr := NewParamReader(params)
	asked := pr.Uint("protocol", 0, 1<<32-1)
	if pr.Err != nil {
		return result{err: pr.Err}
	}
	if asked != ProtocolVersion {
		return result{err: NewError(CodeUnsupportedProtocol,
			"helper speaks protocol %d, host asked for %d", ProtocolVersion, asked)}
	}
	d.mu.Lock()
	d.helloDone = true
	d.mu.Unlock()
	return result{rep: OKReply(map[string]any{
		"protocol":          uint64(ProtocolVersion),
		"helper_version":    d.cfg.HelperVersion,
		"tailscale_version": d.cfg.TailscaleVersion,
		"pid":               uint64(os.Getpid()),
	})}
}

// result is a handler's outcome: a reply, or an error.
type result struct {
	rep *Reply
	err error
}

// respond writes the response for request id and runs the reply's after hook.
func (d *Dispatcher) respond(id uint32, res result) {
	var m *Message
	if res.err != nil {
		m = NewResponse(id, nil, asRPCError(res.err))
		if res.rep != nil && res.rep.FD >= 0 {
			unix.Close(res.rep.FD)
		}
	} else {
		m = NewResponse(id, res.rep.Result, nil)
		m.FD = res.rep.FD
	}
	err := d.w.Send(m)
	sent := err == nil
	if errors.Is(err, errFrameTooLarge) {
		// The answer does not fit in a frame (a status of thousands of peers, say): the
		// host gets a limit error now rather than no answer at all. Any fd is closed.
		err = d.w.Send(NewResponse(id, nil, NewError(CodeLimit, "%v", err)))
	}
	if err != nil && !errors.Is(err, ErrWithheld) {
		d.cfg.Logf("writing response %d: %v", id, err)
	}
	if res.err == nil && res.rep.After != nil {
		res.rep.After(sent)
	}
}

// ErrWithheld is what a Sender returns for a message it deliberately did not write; the
// dispatcher treats it as unsent without logging it as a write failure.
var ErrWithheld = errors.New("message withheld")

// Cancel cancels the context every running handler got, without waiting for them.
func (d *Dispatcher) Cancel() { d.cancel() }

// Close cancels every running handler and waits for them to return. Requests read after
// it has begun are dropped.
func (d *Dispatcher) Close() {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	d.cancel()
	d.calls.end()
	d.wg.Wait()
}
