package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"math"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"tailscale.com/net/packet"
	"tailscale.com/wgengine"

	"github.com/tsproc/tsproc/helper/internal/wire"
)

// capture_pcap and stop_capture (docs/protocol.md §4): the node's packets, as the engine's
// capture hook sees them (what tsnet's CapturePcap records), written as a pcap stream into a
// pipe whose read end the host gets and copies into the file it chose.
//
// The hook is the engine's own, installed before capture_pcap is answered, so every packet
// after the answer is in the file (tsnet's LocalAPI capture registers its output only after it
// has answered). It runs in the packet path: it copies the packet into a bounded queue and
// never waits; a host that reads too slowly loses records (counted in the helper's log), never
// slows the node.

const (
	// captureQueue bounds the records waiting for the host, per capture.
	captureQueue = 4096
	// pcap link types: raw IP, which every reader decodes, and tsnet's own (USER0, each
	// packet prefixed with its path through the node, for Tailscale's Lua dissector).
	linkTypeRaw   = 101
	linkTypeUser0 = 147
)

// captureRun is one capture: its queue of encoded records and how it encodes them.
type captureRun struct {
	queue   chan []byte
	rawIP   bool
	dropped atomic.Int64
}

// captures is the node's running packet captures and the engine hook that feeds them.
type captures struct {
	mu     sync.RWMutex
	next   uint64
	runs   map[uint64]*captureRun
	engine wgengine.Engine // whose hook is installed while runs is not empty
}

// start registers a capture and installs the hook if it is the first.
func (c *captures) start(e wgengine.Engine, rawIP bool) (uint64, *captureRun) {
	run := &captureRun{queue: make(chan []byte, captureQueue), rawIP: rawIP}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.runs == nil {
		c.runs = make(map[uint64]*captureRun)
	}
	c.next++
	c.runs[c.next] = run
	if len(c.runs) == 1 {
		c.engine = e
		e.InstallCaptureHook(c.hook)
	}
	return c.next, run
}

// stop ends capture id: its queue is closed once no hook call can write to it. False if
// there is no such capture (any more).
func (c *captures) stop(id uint64) bool {
	c.mu.Lock()
	run, ok := c.runs[id]
	delete(c.runs, id)
	if ok && len(c.runs) == 0 {
		c.engine.InstallCaptureHook(nil)
		c.engine = nil
	}
	c.mu.Unlock()
	if ok {
		close(run.queue)
	}
	return ok
}

func (c *captures) stopAll() {
	c.mu.RLock()
	ids := make([]uint64, 0, len(c.runs))
	for id := range c.runs {
		ids = append(ids, id)
	}
	c.mu.RUnlock()
	for _, id := range ids {
		c.stop(id)
	}
}

// hook is the engine's capture callback. It must not block and does not own data.
func (c *captures) hook(path packet.CapturePath, when time.Time, data []byte, meta packet.CaptureMeta) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, run := range c.runs {
		select {
		case run.queue <- pcapRecord(path, when, data, meta, run.rawIP):
		default:
			run.dropped.Add(1)
		}
	}
}

func (n *node) capturePcap(_ context.Context, p *wire.ParamReader) (*wire.Reply, error) {
	format := p.OptString("format")
	if p.Err != nil {
		return nil, p.Err
	}
	if format != "" && format != "ip" && format != "tailscale" {
		return nil, wire.NewError(wire.CodeBadRequest, `"format" must be "ip" or "tailscale"`)
	}
	srv, _, err := n.requireStarted()
	if err != nil {
		return nil, err
	}
	engine, ok := srv.Sys().Engine.GetOK()
	if !ok {
		return nil, wire.NewError(wire.CodeInternal, "the node has no packet engine yet")
	}
	// os.Pipe, not unix.Pipe2, which macOS lacks. The read end goes to the host as a raw
	// fd that the reply closes once sent: a close-on-exec duplicate, so that no *os.File's
	// finalizer closes it under the reply.
	r, w, err := os.Pipe()
	if err != nil {
		return nil, wire.NewError(wire.CodeInternal, "capture pipe: %v", err)
	}
	readFD, err := unix.FcntlInt(r.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	r.Close()
	if err != nil {
		w.Close()
		return nil, wire.NewError(wire.CodeInternal, "capture pipe: %v", err)
	}
	id, run := n.captures.start(engine, format != "tailscale")
	write := func() {
		err := writeCapture(w, run)
		if err != nil {
			n.captures.stop(id) // the host closed its end
			for range run.queue {
			}
		}
		w.Close() // the host reads EOF: the file ends on a whole record
		if d := run.dropped.Load(); d > 0 {
			helperLogf("capture %d: dropped %d packets the host did not read in time", id, d)
		}
	}
	return &wire.Reply{Result: map[string]any{"capture": id, "fd": true}, FD: readFD, After: func(sent bool) {
		if !sent || !n.goOwned(write) {
			n.captures.stop(id)
			w.Close()
		}
	}}, nil
}

func (n *node) stopCapture(_ context.Context, p *wire.ParamReader) (*wire.Reply, error) {
	id := p.Uint("capture", 0, math.MaxUint64)
	if p.Err != nil {
		return nil, p.Err
	}
	if !n.captures.stop(id) {
		return nil, wire.NewError(wire.CodeNotFound, "no capture %d", id)
	}
	return wire.OKReply(map[string]any{}), nil
}

// writeCapture writes the pcap file header and then run's records to w until the queue is
// closed; it stops at the first write error.
func writeCapture(w io.Writer, run *captureRun) error {
	bw := bufio.NewWriterSize(w, 1<<16)
	if _, err := bw.Write(pcapHeader(run.rawIP)); err != nil {
		return err
	}
	for rec := range run.queue {
		if _, err := bw.Write(rec); err != nil {
			return err
		}
		if len(run.queue) == 0 {
			if err := bw.Flush(); err != nil {
				return err
			}
		}
	}
	return bw.Flush()
}

// pcapHeader is a classic pcap file header (little-endian, microseconds).
func pcapHeader(rawIP bool) []byte {
	le := binary.LittleEndian
	h := le.AppendUint32(nil, 0xA1B2C3D4)
	h = le.AppendUint16(h, 2)
	h = le.AppendUint16(h, 4)
	h = le.AppendUint32(h, 0)     // GMT
	h = le.AppendUint32(h, 0)     // timestamp accuracy
	h = le.AppendUint32(h, 65535) // snapshot length
	if rawIP {
		return le.AppendUint32(h, linkTypeRaw)
	}
	return le.AppendUint32(h, linkTypeUser0)
}

// pcapRecord is one packet as a pcap record: raw IP, or with tsnet's prefix (path, then the
// source and destination addresses before NAT, if any) exactly as feature/capture writes it.
func pcapRecord(path packet.CapturePath, when time.Time, data []byte, meta packet.CaptureMeta, rawIP bool) []byte {
	var prefix []byte
	if !rawIP {
		le := binary.LittleEndian
		prefix = le.AppendUint16(nil, uint16(path))
		prefix = appendNATAddr(prefix, meta.DidSNAT, meta.OriginalSrc.Addr().AsSlice())
		prefix = appendNATAddr(prefix, meta.DidDNAT, meta.OriginalDst.Addr().AsSlice())
	}
	n := len(prefix) + len(data)
	le := binary.LittleEndian
	rec := make([]byte, 0, 16+n)
	rec = le.AppendUint32(rec, uint32(when.Unix()))
	rec = le.AppendUint32(rec, uint32(when.Nanosecond()/1000))
	rec = le.AppendUint32(rec, uint32(n))
	rec = le.AppendUint32(rec, uint32(n))
	rec = append(rec, prefix...)
	return append(rec, data...)
}

func appendNATAddr(b []byte, did bool, addr []byte) []byte {
	if !did {
		return append(b, 0)
	}
	return append(append(b, byte(len(addr))), addr...)
}
