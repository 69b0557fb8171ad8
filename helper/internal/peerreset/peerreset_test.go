package peerreset

import (
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"tailscale.com/net/packet"
)

func TestSegmentIsAValidACKForTheTuple(t *testing.T) {
	for _, tc := range []struct{ local, remote string }{
		{"100.64.0.1:40000", "100.64.0.2:443"},
		{"[fd7a:115c:a1e0::1]:40000", "[fd7a:115c:a1e0::2]:443"},
	} {
		local, remote := netip.MustParseAddrPort(tc.local), netip.MustParseAddrPort(tc.remote)
		pkt, err := Segment(local, remote)
		if err != nil {
			t.Fatal(err)
		}
		var p packet.Parsed
		p.Decode(pkt)
		if p.Src != local || p.Dst != remote || p.TCPFlags != packet.TCPAck {
			t.Errorf("%s: decoded %v -> %v flags %v, want an ACK %v -> %v", tc.local, p.Src, p.Dst, p.TCPFlags, local, remote)
		}
		ipLen := header.IPv6MinimumSize
		if local.Addr().Is4() {
			ipLen = header.IPv4MinimumSize
			if !header.IPv4(pkt).IsChecksumValid() {
				t.Errorf("%s: bad IPv4 checksum", tc.local)
			}
		}
		tcp := header.TCP(pkt[ipLen:])
		src, dst := tcpip.AddrFromSlice(local.Addr().AsSlice()), tcpip.AddrFromSlice(remote.Addr().AsSlice())
		if !tcp.IsChecksumValid(src, dst, 0, 0) {
			t.Errorf("%s: bad TCP checksum", tc.local)
		}
	}
	if _, err := Segment(netip.MustParseAddrPort("100.64.0.1:1"), netip.MustParseAddrPort("[::1]:2")); err == nil {
		t.Error("mixed IP versions: no error")
	}
}
