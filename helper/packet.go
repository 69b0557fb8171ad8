package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/tsproc/tsproc/helper/internal/bridge"
	"github.com/tsproc/tsproc/helper/internal/wire"
)

// UDP: listen_packet and dial_udp. Each UDP socket on the tailnet gets an AF_UNIX packet
// socketpair (SOCK_SEQPACKET on Linux); every message on it is one datagram with an address
// header (docs/protocol.md §6a):
//
//	family u8 (4 or 6) | address (4 or 16 bytes) | port u16 BE | payload
//
// From the helper the address is the datagram's source; from the host, its destination.

const (
	maxDatagram = 65535
	maxHeader   = 1 + 16 + 2
)

// packetRelay moves datagrams between a tailnet net.PacketConn and the helper's end of a
// packet socketpair.
type packetRelay struct {
	id      uint64
	pc      net.PacketConn
	local   *net.UnixConn
	passFD  int
	dropped uint64 // datagrams the host was too slow for (UDP may drop; a relay must not block)
	once    sync.Once
}

// connectedPacketConn makes a dialled (connected) UDP net.Conn look like a PacketConn.
type connectedPacketConn struct{ net.Conn }

func (c connectedPacketConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, err := c.Read(b)
	return n, c.RemoteAddr(), err
}

func (c connectedPacketConn) WriteTo(b []byte, _ net.Addr) (int, error) { return c.Write(b) }

func (n *node) listenPacket(_ context.Context, p *wire.ParamReader) (*wire.Reply, error) {
	port := p.OptUint("port", 0, 65535, 0)
	if p.Err != nil {
		return nil, p.Err
	}
	srv, _, err := n.requireRunning()
	if err != nil {
		return nil, err
	}
	ip4, _ := srv.TailscaleIPs()
	if !ip4.IsValid() {
		return nil, wire.NewError(wire.CodeNotRunning, "the node has no tailnet address yet")
	}
	pc, err := srv.ListenPacket("udp", netip.AddrPortFrom(ip4, uint16(port)).String())
	if err != nil {
		if isUDPPortInUse(err) {
			return nil, wire.NewError(wire.CodeAddressInUse, "udp port %d: %v", port, err)
		}
		return nil, wire.NewError(wire.CodeInternal, "listen_packet: %v", err)
	}
	return n.handOverPacket(pc, map[string]any{"local": pc.LocalAddr().String()})
}

func (n *node) dialUDP(ctx context.Context, p *wire.ParamReader) (*wire.Reply, error) {
	timeoutMS := readTimeout(p)
	host := p.String("host")
	port := p.Uint("port", 1, 65535)
	if p.Err != nil {
		return nil, p.Err
	}
	srv, lc, err := n.requireRunning()
	if err != nil {
		return nil, err
	}
	dialCtx, cancel := callContext(ctx, timeoutMS)
	defer cancel()
	ip, err := n.resolver.resolve(dialCtx, srv, lc, host)
	if err != nil {
		return nil, wire.NewError(wire.CodeDialFailed, "dial udp %s: %v", host, err)
	}
	c, err := dialTailnet(dialCtx, srv, "udp", netip.AddrPortFrom(ip, uint16(port)))
	if err != nil {
		return nil, wire.NewError(wire.CodeDialFailed, "dial udp %s:%d: %v", host, port, err)
	}
	return n.handOverPacket(connectedPacketConn{c}, map[string]any{
		"local": c.LocalAddr().String(), "remote": c.RemoteAddr().String(),
	})
}

// handOverPacket makes the socketpair for pc and answers with the host's end; the relay
// starts once the host has it. It owns pc.
func (n *node) handOverPacket(pc net.PacketConn, result map[string]any) (*wire.Reply, error) {
	local, passFD, err := bridge.NewSocketpair(bridge.PacketSocketType, "tsproc-packet", 0)
	if err != nil {
		pc.Close()
		return nil, wire.NewError(wire.CodeInternal, "%v", err)
	}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		pc.Close()
		local.Close()
		unix.Close(passFD)
		return nil, wire.NewError(wire.CodeInternal, "helper is shutting down")
	}
	n.nextConn++
	r := &packetRelay{id: n.nextConn, pc: pc, local: local, passFD: passFD}
	n.packets[r.id] = r
	n.mu.Unlock()
	result["packet"] = r.id
	result["fd"] = true
	fd := r.passFD
	r.passFD = -1
	return &wire.Reply{Result: result, FD: fd, After: func(sent bool) {
		run := func() {
			r.run()
			n.forgetPacket(r.id)
		}
		if !sent || !n.goOwned(run) {
			r.close()
			n.forgetPacket(r.id)
		}
	}}, nil
}

func (n *node) forgetPacket(id uint64) {
	n.mu.Lock()
	delete(n.packets, id)
	n.mu.Unlock()
}

// run pumps both ways until either side ends, then closes both.
func (r *packetRelay) run() {
	var wg sync.WaitGroup
	wg.Go(r.toHost)
	wg.Go(r.toTailnet)
	wg.Wait()
}

func (r *packetRelay) close() {
	r.once.Do(func() {
		r.pc.Close()
		r.local.Close()
	})
}

func (r *packetRelay) toHost() {
	defer r.close()
	buf := make([]byte, maxHeader+maxDatagram)
	raw, err := r.local.SyscallConn()
	if err != nil {
		return
	}
	for {
		n, addr, err := r.pc.ReadFrom(buf[maxHeader:])
		if err != nil {
			return
		}
		ap, ok := addrPort(addr)
		if !ok {
			continue
		}
		hdr := appendPacketHeader(nil, ap)
		msg := buf[maxHeader-len(hdr) : maxHeader+n]
		copy(msg, hdr)
		var sendErr error
		if err := raw.Write(func(fd uintptr) bool {
			sendErr = unix.Send(int(fd), msg, unix.MSG_DONTWAIT)
			return true // never wait: a full host queue drops the datagram, as UDP may
		}); err != nil {
			return
		}
		switch {
		case sendErr == nil:
		case errors.Is(sendErr, unix.EAGAIN), errors.Is(sendErr, unix.ENOBUFS):
			r.dropped++
		default:
			return // EPIPE / ECONNREFUSED: the host closed its end
		}
	}
}

func (r *packetRelay) toTailnet() {
	defer r.close()
	buf := make([]byte, maxHeader+maxDatagram+1)
	for {
		n, err := r.local.Read(buf)
		if err != nil || n == 0 {
			return // EOF: the host closed its end
		}
		ap, payload, err := parsePacketHeader(buf[:n])
		if err != nil {
			helperLogf("packet %d: dropping a datagram from the host: %v", r.id, err)
			continue
		}
		// A send error (no route to that peer, say) loses this datagram, as UDP does.
		_, _ = r.pc.WriteTo(payload, net.UDPAddrFromAddrPort(ap))
	}
}

func addrPort(a net.Addr) (netip.AddrPort, bool) {
	switch v := a.(type) {
	case *net.UDPAddr:
		return v.AddrPort(), true
	default:
		ap, err := netip.ParseAddrPort(a.String())
		return ap, err == nil
	}
}

func appendPacketHeader(b []byte, ap netip.AddrPort) []byte {
	ip := ap.Addr().Unmap()
	if ip.Is4() {
		b = append(b, 4)
		a := ip.As4()
		b = append(b, a[:]...)
	} else {
		b = append(b, 6)
		a := ip.As16()
		b = append(b, a[:]...)
	}
	return binary.BigEndian.AppendUint16(b, ap.Port())
}

func parsePacketHeader(b []byte) (netip.AddrPort, []byte, error) {
	if len(b) < 1 {
		return netip.AddrPort{}, nil, errors.New("empty datagram")
	}
	size := map[byte]int{4: 4, 6: 16}[b[0]]
	if size == 0 {
		return netip.AddrPort{}, nil, fmt.Errorf("address family %d is neither 4 nor 6", b[0])
	}
	if len(b) < 1+size+2 {
		return netip.AddrPort{}, nil, errors.New("datagram shorter than its address header")
	}
	ip, _ := netip.AddrFromSlice(b[1 : 1+size])
	port := binary.BigEndian.Uint16(b[1+size:])
	return netip.AddrPortFrom(ip, port), b[1+size+2:], nil
}
