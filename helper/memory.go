package main

import (
	"fmt"
	"time"

	"github.com/tsproc/tsproc/helper/internal/codepages"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"tailscale.com/tsnet"
)

// What a start request may ask of the node to keep its memory small: tcp_buffer_max and
// release_code_pages (docs/protocol.md; the host's memory_profile="small" asks for both).

// The cap on netstack's TCP buffers a start request may set (tcp_buffer_max). What bounds the
// node's memory in a bulk transfer is the data in flight: every packet of it sits in a
// wireguard-go message buffer of 64 KiB until netstack has taken it, and a TCP connection
// keeps up to its window in flight. tsnet allows 8 MiB receive and 6 MiB send windows;
// gVisor's own defaults, which tsnet keeps on iOS to stay under its memory limit, are 1 MiB.
const (
	minTCPBufferMax = 64 << 10
	maxTCPBufferMax = 8 << 20
)

// transportOptionSetter is what netstack.Impl offers to change the stack's TCP options
// (tsnet's Sys().Netstack holds it behind an interface that lacks the method).
type transportOptionSetter interface {
	SetTransportProtocolOption(tcpip.TransportProtocolNumber, tcpip.SettableTransportProtocolOption) tcpip.Error
}

// capTCPBuffers makes max the largest TCP send and receive buffer of srv's netstack, for every
// connection made from now on. It must run after srv.Start (which creates the netstack with
// tsnet's sizes) and before any connection. The default size (what a connection starts with,
// before receive-buffer auto-tuning grows it) is lowered to max too where it is larger:
// gVisor ignores a range whose default lies above its maximum.
func capTCPBuffers(srv *tsnet.Server, max int) error {
	ns, ok := srv.Sys().Netstack.GetOK()
	if !ok {
		return fmt.Errorf("tsnet has no netstack")
	}
	setter, ok := ns.(transportOptionSetter)
	if !ok {
		return fmt.Errorf("tsnet's netstack (%T) cannot set TCP options", ns)
	}
	def := min(max, tcp.DefaultReceiveBufferSize)
	rx := tcpip.TCPReceiveBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: def, Max: max}
	if err := setter.SetTransportProtocolOption(tcp.ProtocolNumber, &rx); err != nil {
		return fmt.Errorf("capping the TCP receive buffer: %v", err)
	}
	tx := tcpip.TCPSendBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: def, Max: max}
	if err := setter.SetTransportProtocolOption(tcp.ProtocolNumber, &tx); err != nil {
		return fmt.Errorf("capping the TCP send buffer: %v", err)
	}
	return nil
}

// settleAfterUp is how long after up the helper releases its binary's pages a second time:
// the first netmap, the peers' WireGuard and magicsock set-up and the first connections run
// code once in the seconds after up; released at up alone, an idle helper measured 14-17 MB
// of its binary mapped two seconds later, against ~10 MB once those had run.
const settleAfterUp = 5 * time.Second

// afterUp releases the pages of the helper's binary it mapped during start-up and does not use
// (internal/codepages) when start asked for it, at once and again settleAfterUp later. A
// release costs a few hundred page faults as the pages in use come back; a release racing
// the helper's exit is harmless, so the timer is not tied to the node's close.
func (n *node) afterUp() {
	n.mu.Lock()
	release := n.releaseCodePages
	n.mu.Unlock()
	if !release {
		return
	}
	releaseCodePages()
	time.AfterFunc(settleAfterUp, releaseCodePages)
}

func releaseCodePages() {
	released, err := codepages.Release()
	if err != nil {
		helperLogf("releasing the binary's unused pages: %v", err)
		return
	}
	helperLogf("released %d MiB of the binary's mappings (release_code_pages)", released>>20)
}
