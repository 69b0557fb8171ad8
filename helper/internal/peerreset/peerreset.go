// Package peerreset makes a tailnet peer reset a TCP connection that this node no longer has —
// one a previous helper process bridged — without knowing its sequence numbers.
//
// A reset is accepted only with a sequence number the peer expects (RFC 5961 §3), which
// died with the old netstack. So the helper sends, for the old 4-tuple, an ACK segment whose
// sequence number is almost surely outside the peer's receive window. The peer answers it
// with an ACK carrying <SEQ=SND.NXT><ACK=RCV.NXT> (RFC 793 §3.9, RFC 5961 §4-5). That ACK
// reaches this node's new netstack, which has no endpoint for the tuple and answers, as any
// TCP does, with a reset whose sequence number is the ACK's acknowledgement number: exactly
// RCV.NXT, so the peer accepts it and its blocked read fails with "connection reset". An ACK,
// not a SYN: Tailscale's packet filter lets TCP segments without SYN through in both
// directions, where a SYN to the peer's ephemeral port would need an ACL allowing this node
// to connect there.
package peerreset

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Segment returns an IP packet carrying a TCP ACK from local to remote with random sequence
// and acknowledgement numbers: the probe the package doc describes.
func Segment(local, remote netip.AddrPort) ([]byte, error) {
	if local.Addr().Is4() != remote.Addr().Is4() {
		return nil, errors.New("local and remote are of different IP versions")
	}
	var nums [8]byte
	if _, err := rand.Read(nums[:]); err != nil {
		return nil, err
	}
	src := tcpip.AddrFromSlice(local.Addr().AsSlice())
	dst := tcpip.AddrFromSlice(remote.Addr().AsSlice())
	ipLen := header.IPv6MinimumSize
	if local.Addr().Is4() {
		ipLen = header.IPv4MinimumSize
	}
	pkt := make([]byte, ipLen+header.TCPMinimumSize)
	if local.Addr().Is4() {
		ip := header.IPv4(pkt)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(len(pkt)),
			TTL:         64,
			Protocol:    uint8(header.TCPProtocolNumber),
			SrcAddr:     src,
			DstAddr:     dst,
		})
		ip.SetChecksum(^ip.CalculateChecksum())
	} else {
		header.IPv6(pkt).Encode(&header.IPv6Fields{
			PayloadLength:     header.TCPMinimumSize,
			TransportProtocol: header.TCPProtocolNumber,
			HopLimit:          64,
			SrcAddr:           src,
			DstAddr:           dst,
		})
	}
	tcp := header.TCP(pkt[ipLen:])
	tcp.Encode(&header.TCPFields{
		SrcPort:    local.Port(),
		DstPort:    remote.Port(),
		SeqNum:     binary.BigEndian.Uint32(nums[:4]),
		AckNum:     binary.BigEndian.Uint32(nums[4:]),
		DataOffset: header.TCPMinimumSize,
		Flags:      header.TCPFlagAck,
		WindowSize: 0,
	})
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, header.TCPMinimumSize)
	tcp.SetChecksum(^tcp.CalculateChecksum(xsum))
	return pkt, nil
}
