package localtailnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"tailscale.com/net/netaddr"
	"tailscale.com/net/stun"
	"tailscale.com/types/logger"
)

// stunServer answers STUN binding requests on one UDP socket.
//
// Nodes' netcheck sends STUN to the DERP map's STUN port to learn their own endpoint and to
// pick a home DERP region; without an answer they still work but log netcheck failures and
// never find a direct path. This is what tailscale.com/net/stun/stuntest does for Tailscale's
// own tests, which cannot be imported outside a test binary because it takes a testing.TB.
type stunServer struct {
	pc   *net.UDPConn
	logf logger.Logf
	done chan struct{} // closed when serve returns
}

// listenSTUN starts a STUN server on addr with an ephemeral port.
func listenSTUN(addr netip.Addr, logf logger.Logf) (*stunServer, error) {
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
	if err != nil {
		return nil, fmt.Errorf("listen STUN: %w", err)
	}
	s := &stunServer{pc: pc, logf: logf, done: make(chan struct{})}
	go s.serve()
	return s, nil
}

// port is the UDP port the server listens on.
func (s *stunServer) port() int {
	return s.pc.LocalAddr().(*net.UDPAddr).Port
}

func (s *stunServer) serve() {
	defer close(s.done)
	var buf [64 << 10]byte
	for {
		n, src, err := s.pc.ReadFromUDPAddrPort(buf[:])
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// A UDP read error (e.g. an ICMP port unreachable reported on Linux) concerns one
			// peer only; keep serving the others.
			s.logf("stun: read: %v", err)
			continue
		}
		pkt := buf[:n]
		if !stun.Is(pkt) {
			continue
		}
		txid, err := stun.ParseBindingRequest(pkt)
		if err != nil {
			continue
		}
		src = netaddr.Unmap(src)
		if _, err := s.pc.WriteToUDPAddrPort(stun.Response(txid, src), src); err != nil {
			s.logf("stun: write to %v: %v", src, err)
		}
	}
}

// Close stops the server and waits for its goroutine to end.
func (s *stunServer) Close() error {
	err := s.pc.Close()
	<-s.done
	return err
}
