package connrecord

import (
	"encoding/binary"
	"hash/crc32"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
)

// newFile makes a record file with the host's header, as tsproc/_child/connrecord.py does.
func newFile(t *testing.T, slots int) (*os.File, int) {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "record")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	hdr := make([]byte, headerSize+slots*SlotSize)
	copy(hdr, Magic)
	binary.LittleEndian.PutUint32(hdr[8:], uint32(slots))
	if _, err := f.Write(hdr); err != nil {
		t.Fatal(err)
	}
	fd, err := syscall.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	return f, fd
}

// open reads the tuples the host would: state 1 and a matching CRC.
func openTuples(t *testing.T, f *os.File) []string {
	t.Helper()
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for off := headerSize; off+SlotSize <= len(b); off += SlotSize {
		s := b[off : off+SlotSize]
		if s[0] != 1 || binary.LittleEndian.Uint32(s[40:]) != crc32.ChecksumIEEE(s[:40]) {
			continue
		}
		n := 16
		if s[1] == 4 {
			n = 4
		}
		la, _ := netip.AddrFromSlice(s[8 : 8+n])
		ra, _ := netip.AddrFromSlice(s[24 : 24+n])
		out = append(out, netip.AddrPortFrom(la, binary.LittleEndian.Uint16(s[2:])).String()+" "+
			netip.AddrPortFrom(ra, binary.LittleEndian.Uint16(s[4:])).String())
	}
	return out
}

func TestAddDone(t *testing.T) {
	f, fd := newFile(t, 4)
	r, err := Open(fd)
	if err != nil {
		t.Fatal(err)
	}
	l4, r4 := netip.MustParseAddrPort("100.64.0.1:93"), netip.MustParseAddrPort("100.64.0.2:40000")
	l6, r6 := netip.MustParseAddrPort("[fd7a:115c:a1e0::1]:93"), netip.MustParseAddrPort("[fd7a:115c:a1e0::2]:40001")
	r.Add(l4, r4)
	r.Add(l4, r4) // a retransmitted SYN takes no second slot
	r.Add(l6, r6)
	got := openTuples(t, f)
	if len(got) != 2 || got[0] != "100.64.0.1:93 100.64.0.2:40000" || got[1] != "[fd7a:115c:a1e0::1]:93 [fd7a:115c:a1e0::2]:40001" {
		t.Fatalf("open tuples %q", got)
	}
	r.Done(net.TCPAddrFromAddrPort(l4), net.TCPAddrFromAddrPort(r4))
	if got := openTuples(t, f); len(got) != 1 || got[0] != "[fd7a:115c:a1e0::1]:93 [fd7a:115c:a1e0::2]:40001" {
		t.Fatalf("after Done: %q", got)
	}
	// Full: the oldest open slot is taken, and its tuple forgotten.
	for p := range uint16(5) {
		r.Add(l4, netip.AddrPortFrom(r4.Addr(), 50000+p))
	}
	if got := openTuples(t, f); len(got) != 4 {
		t.Fatalf("a full ring: %q", got)
	}
	if len(r.open) != 4 {
		t.Fatalf("the index holds %d tuples, want 4", len(r.open))
	}
	var nilRecord *Record
	nilRecord.Add(l4, r4)
	nilRecord.Done(net.TCPAddrFromAddrPort(l4), net.TCPAddrFromAddrPort(r4))
}

func TestOpenRefusesOtherFiles(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "junk")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Write(make([]byte, 4096))
	fd, _ := syscall.Dup(int(f.Fd()))
	if _, err := Open(fd); err == nil {
		t.Fatal("a file without the header was opened")
	}
}
