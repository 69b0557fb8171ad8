package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
	"time"

	"tailscale.com/net/packet"
)

func TestPcapRecord(t *testing.T) {
	when := time.Unix(1700000000, 123456000)
	meta := packet.CaptureMeta{DidDNAT: true, OriginalDst: netip.MustParseAddrPort("100.64.0.2:80")}
	for _, tc := range []struct {
		rawIP bool
		want  string
	}{
		{true, "packet"},
		{false, "\x02\x00\x00\x04\x64\x40\x00\x02packet"},
	} {
		rec := pcapRecord(packet.CapturePath(2), when, []byte("packet"), meta, tc.rawIP)
		le := binary.LittleEndian
		if le.Uint32(rec) != 1700000000 || le.Uint32(rec[4:]) != 123456 {
			t.Errorf("rawIP %v: timestamp %d.%06d", tc.rawIP, le.Uint32(rec), le.Uint32(rec[4:]))
		}
		if n := le.Uint32(rec[8:]); int(n) != len(tc.want) || le.Uint32(rec[12:]) != n || string(rec[16:]) != tc.want {
			t.Errorf("rawIP %v: record %q (length %d), want %q", tc.rawIP, rec[16:], n, tc.want)
		}
	}
	if h := pcapHeader(true); len(h) != 24 || !bytes.Equal(h[:4], []byte{0xd4, 0xc3, 0xb2, 0xa1}) || binary.LittleEndian.Uint32(h[20:]) != linkTypeRaw {
		t.Errorf("header % x", h)
	}
}

func TestWriteCaptureStopsAtAWriteError(t *testing.T) {
	run := &captureRun{queue: make(chan []byte, 2), rawIP: true}
	run.queue <- []byte("a")
	close(run.queue)
	var out bytes.Buffer
	if err := writeCapture(&out, run); err != nil || out.Len() != 25 {
		t.Fatalf("wrote %d bytes, err %v", out.Len(), err)
	}
	run = &captureRun{queue: make(chan []byte, 1), rawIP: true}
	run.queue <- []byte("b")
	if err := writeCapture(failingWriter{}, run); err == nil {
		t.Fatal("a failed write went unnoticed")
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("host closed its end") }
