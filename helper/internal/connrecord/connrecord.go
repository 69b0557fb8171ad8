// Package connrecord keeps the four-tuples of the tailnet connections this helper's netstack
// has taken on for a listener and not yet handed to the host, in memory the host shares, so
// that the host can have their peers reset after this process died, however it died.
//
// The host knows the four-tuple of every connection it was handed (accepted) and has a new
// helper reset their peers after a death (reset_peers, docs/protocol.md §4). A connection
// tsnet's netstack completed and this helper had not handed over yet — waiting in tsnet's
// accept queue while the host held the backlog, or between tsnet's Accept and the accepted
// notification — is known only here, and dies with the process: a SIGKILL or the kernel's
// OOM killer leave no time to say anything. So the helper writes each such tuple into a small
// shared mapping the host created and passed at start (an inherited fd), and clears it once
// the connection is handed over. Writing is a few stores into memory, under a mutex: no
// system call, no message, no wake-up of the host. The host reads the mapping after the
// process has exited (tsproc/_child/connrecord.py).
//
// The tuple is written when netstack asks which handler takes a new flow (tsnet's
// GetTCPHandlerForFlow), before it answers the SYN: a connection whose peer may think it
// is established is always in the record. One that netstack then refused, or that tsnet
// closed unaccepted, stays there until its slot is reused; the host probes it needlessly,
// which is harmless (see reset_peers).
//
// Layout (little-endian): a 16-byte header, "TSPCONN1" and the slot count (u32), then the
// slots, 48 bytes each: state (u8, 1: open), family (u8, 4 or 6), local port, remote port
// (u16 each), 2 bytes of padding, the local and the remote address (16 bytes each, IPv4 in
// the first 4), and the CRC-32 (IEEE) of the 40 bytes before it. A slot is open only with
// state 1 and a matching CRC, so one the process was writing when it was killed is not
// read as a tuple (and its SYN was not answered yet).
package connrecord

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"tailscale.com/tsnet"
	"tailscale.com/wgengine/netstack"
)

const (
	// Magic starts the mapping.
	Magic      = "TSPCONN1"
	headerSize = 16
	// SlotSize is the size of one slot.
	SlotSize = 48
	// scan is how many slots a new tuple looks at for a free one before it takes the slot
	// under the cursor anyway (its connection is the oldest in the ring).
	scan = 8
)

type tuple struct{ local, remote netip.AddrPort }

// Record is an open shared mapping.
type Record struct {
	mu     sync.Mutex
	mem    []byte
	slots  int
	cursor int
	open   map[tuple]int // tuple → its slot
	byslot []tuple       // slot → its tuple, valid while the slot is open
}

// Open maps the shared file fd (which it then closes) and checks its header.
func Open(fd int) (*Record, error) {
	defer syscall.Close(fd)
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("connection record fd %d: %v", fd, err)
	}
	if st.Size < headerSize+SlotSize || st.Size > 1<<24 {
		return nil, fmt.Errorf("connection record fd %d: size %d", fd, st.Size)
	}
	mem, err := syscall.Mmap(fd, 0, int(st.Size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("connection record fd %d: mmap: %v", fd, err)
	}
	slots := int(binary.LittleEndian.Uint32(mem[8:12]))
	if string(mem[:8]) != Magic || slots < 1 || headerSize+slots*SlotSize > len(mem) {
		syscall.Munmap(mem)
		return nil, errors.New("connection record: not a tsproc connection record")
	}
	return &Record{mem: mem, slots: slots, open: make(map[tuple]int), byslot: make([]tuple, slots)}, nil
}

// Add records that this node's netstack is taking on a connection from remote to local.
func (r *Record) Add(local, remote netip.AddrPort) {
	if r == nil {
		return
	}
	t := tuple{unmap(local), unmap(remote)}
	if t.local.Addr().Is4() != t.remote.Addr().Is4() {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.open[t]; ok {
		return // a retransmitted SYN
	}
	slot := r.cursor
	for i := range scan {
		s := (r.cursor + i) % r.slots
		if r.mem[headerSize+s*SlotSize] == 0 {
			slot = s
			break
		}
	}
	r.cursor = (slot + 1) % r.slots
	if old := r.byslot[slot]; r.open[old] == slot {
		delete(r.open, old)
	}
	r.open[t], r.byslot[slot] = slot, t
	b := r.mem[headerSize+slot*SlotSize : headerSize+(slot+1)*SlotSize]
	clear(b)
	b[0], b[1] = 1, 6
	if t.local.Addr().Is4() {
		b[1] = 4
	}
	binary.LittleEndian.PutUint16(b[2:], t.local.Port())
	binary.LittleEndian.PutUint16(b[4:], t.remote.Port())
	la, ra := t.local.Addr().As16(), t.remote.Addr().As16()
	if t.local.Addr().Is4() {
		l4, r4 := t.local.Addr().As4(), t.remote.Addr().As4()
		copy(la[:], l4[:])
		copy(ra[:], r4[:])
		clear(la[4:])
		clear(ra[4:])
	}
	copy(b[8:24], la[:])
	copy(b[24:40], ra[:])
	binary.LittleEndian.PutUint32(b[40:], crc32.ChecksumIEEE(b[:40]))
}

// Done forgets the connection between local and remote: the host has it now (or it ended).
// A connection never added is ignored.
func (r *Record) Done(local, remote net.Addr) {
	if r == nil {
		return
	}
	l, err1 := netip.ParseAddrPort(local.String())
	rm, err2 := netip.ParseAddrPort(remote.String())
	if err1 != nil || err2 != nil {
		return
	}
	t := tuple{unmap(l), unmap(rm)}
	r.mu.Lock()
	defer r.mu.Unlock()
	slot, ok := r.open[t]
	if !ok {
		return
	}
	delete(r.open, t)
	r.mem[headerSize+slot*SlotSize] = 0
}

// Watch makes srv's netstack add every new flow that a tsnet listener or fallback handler
// takes to r. srv must be started and not yet up: netstack reads the hook for every new
// flow, and before the node is up no peer can send one.
func Watch(srv *tsnet.Server, r *Record) error {
	ns, ok := srv.Sys().Netstack.GetOK()
	if !ok {
		return errors.New("tsnet has no netstack")
	}
	impl, ok := ns.(*netstack.Impl)
	if !ok {
		return fmt.Errorf("tsnet's netstack is a %T, not a *netstack.Impl", ns)
	}
	next := impl.GetTCPHandlerForFlow
	if next == nil {
		return errors.New("tsnet has not set netstack's TCP flow handler")
	}
	impl.GetTCPHandlerForFlow = func(src, dst netip.AddrPort) (func(net.Conn), bool) {
		handler, intercept := next(src, dst)
		if handler != nil {
			r.Add(dst, src) // before netstack answers the SYN
		}
		return handler, intercept
	}
	return nil
}

func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}
