package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"tailscale.com/net/packet"
	"tailscale.com/net/tstun"
	"tailscale.com/tsnet"
	"tailscale.com/wgengine/filter"

	"github.com/tsproc/tsproc/helper/internal/timewait"
	"github.com/tsproc/tsproc/helper/internal/tsnettest"
)

// The stalled dial of docs/reliability.md in pure Go: sequential connections to a server that
// closes first, each "dial, send 1 byte, read the echo and the server's EOF, close" bounded at
// 5 s. On stock tsnet about 1 in 100 never connects: its 4-tuple repeats one the server holds
// in TIME_WAIT, whose netstack endpoint drops the new SYN. Each subtest fixes one side only,
// so each proves its half of package timewait on its own. A stall fails the test with the
// packet trace of its 4-tuple.
//
// TSPROC_TIMEWAIT_CONNECTIONS sets the connections per subtest (default 600: the retrying
// client waits ~1 s for each of its ~1 % repeated tuples).
//
// The second subtest's server keeps TIME_WAIT for 10 s, not netstack's 60: long enough that a
// client without the retry stalls (its SYN retransmissions at 1 and 3 s meet the same
// TIME_WAIT), short enough that the server's TIME_WAIT endpoints are gone before it is closed.
// tsnet's Close hangs with more endpoints than netstack's 512-packet outbound queue holds to
// reset (stack.Close aborts each; nothing drains the queue any more).
func TestServerClosesFirstNeverStalls(t *testing.T) {
	n := 600
	if v := os.Getenv("TSPROC_TIMEWAIT_CONNECTIONS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			t.Fatal(err)
		}
	}
	controlURL := startE2ETailnet(t)
	t.Run("stock client, server with short TIME_WAIT", func(t *testing.T) {
		countStalls(t, controlURL, n, timewait.Duration, func(ctx context.Context, cli *tsnet.Server, dst string) (net.Conn, error) {
			return cli.Dial(ctx, "tcp", dst)
		})
	})
	t.Run("retrying client, server with TIME_WAIT", func(t *testing.T) {
		countStalls(t, controlURL, n, serverTimeWait, func(ctx context.Context, cli *tsnet.Server, dst string) (net.Conn, error) {
			return timewait.Dial(ctx, func(ctx context.Context) (net.Conn, error) { return cli.Dial(ctx, "tcp", dst) })
		})
	})
}

// serverTimeWait is the second subtest's server's TIME_WAIT (see above).
const serverTimeWait = 10 * time.Second

type dialFunc func(ctx context.Context, cli *tsnet.Server, dst string) (net.Conn, error)

func countStalls(t *testing.T, controlURL string, n int, timeWait time.Duration, dial dialFunc) {
	cli := tsnettest.NewNode(t, controlURL, "cli", e2eAuthKey)
	srv := tsnettest.NewNode(t, controlURL, "srv", e2eAuthKey)
	if _, err := tsnettest.UpWithin(t, cli, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	ipS, err := tsnettest.UpWithin(t, srv, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := timewait.SetTimeWait(srv, timeWait); err != nil {
		t.Fatal(err)
	}
	// Before the nodes are closed (at the subtest's end), the server's TIME_WAIT ends.
	defer time.Sleep(timeWait + 500*time.Millisecond)
	var plog pktLog
	plog.hook(t, cli, "cli")
	plog.hook(t, srv, "srv")
	ln, err := srv.Listen("tcp", ":9000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close() // first: the client waits for this EOF
				b := make([]byte, 1)
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := io.ReadFull(c, b); err == nil {
					c.Write(b)
				}
			}()
		}
	}()
	dst := netip.AddrPortFrom(ipS, 9000).String()
	// The first connection also finds the path between the nodes: it may take longer. The
	// server came up last, so the client may not have it in its netmap yet.
	wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
	tsnettest.WaitForPeer(t, wctx, cli, ipS)
	wc, err := cli.Dial(wctx, "tcp", dst)
	wcancel()
	if err != nil {
		t.Fatal(err)
	}
	wc.Close()
	stalls := 0
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := echoOnce(ctx, cli, dst, dial)
		cancel()
		if err != nil {
			stalls++
			t.Errorf("connection %d: %v; the server's last SYN's 4-tuple:\n%s", i, err, plog.lastSynTrace())
		}
	}
	t.Logf("%d stalls in %d connections", stalls, n)
}

func echoOnce(ctx context.Context, cli *tsnet.Server, dst string, dial dialFunc) error {
	c, err := dial(ctx, cli, dst)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	c.SetDeadline(deadline)
	if _, err := c.Write([]byte{'x'}); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if _, err := io.Copy(io.Discard, c); err != nil {
		return fmt.Errorf("read to EOF: %w", err)
	}
	return nil
}

// pktRec is a TCP segment a node received from WireGuard, logged by pktLog: what the other
// node's netstack sent, so the two nodes' logs together are the whole conversation.
type pktRec struct {
	at      time.Time
	who     string
	src     netip.AddrPort
	dst     netip.AddrPort
	flags   packet.TCPFlag
	seq     uint32
	ack     uint32
	payload int
}

// pktLog keeps the last 100,000 to 200,000 segments of the hooked nodes.
type pktLog struct {
	mu   sync.Mutex
	recs []pktRec
}

// hook logs the TCP segments s receives from WireGuard (before its packet filter).
func (l *pktLog) hook(t *testing.T, s *tsnet.Server, who string) {
	w, ok := s.Sys().Tun.GetOK()
	if !ok {
		t.Fatal("no tun")
	}
	w.PreFilterPacketInboundFromWireGuard = func(p *packet.Parsed, _ *tstun.Wrapper) filter.Response {
		if p.IPProto == 6 {
			b := p.Buffer()
			off := int(b[0]&0xf) * 4
			if b[0]>>4 == 6 {
				off = 40
			}
			if len(b) >= off+20 {
				r := pktRec{at: time.Now(), who: who + " in", src: p.Src, dst: p.Dst, flags: p.TCPFlags,
					seq: binary.BigEndian.Uint32(b[off+4:]), ack: binary.BigEndian.Uint32(b[off+8:]),
					payload: len(b) - off - int(b[off+12]>>4)*4}
				l.mu.Lock()
				l.recs = append(l.recs, r)
				if len(l.recs) > 200000 {
					l.recs = append([]pktRec(nil), l.recs[100000:]...)
				}
				l.mu.Unlock()
			}
		}
		return filter.Accept
	}
}

// lastSynTrace is every logged segment of the 4-tuple of the last SYN the server received,
// earlier connections on the same tuple included.
func (l *pktLog) lastSynTrace() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var syn *pktRec
	for j := len(l.recs) - 1; j >= 0; j-- {
		r := &l.recs[j]
		if r.who == "srv in" && r.flags&packet.TCPSyn != 0 && r.flags&packet.TCPAck == 0 {
			syn = r
			break
		}
	}
	if syn == nil {
		return "  (no SYN seen)"
	}
	var b strings.Builder
	for _, r := range l.recs {
		if (r.src == syn.src && r.dst == syn.dst) || (r.src == syn.dst && r.dst == syn.src) {
			fmt.Fprintf(&b, "  %s %s %v -> %v %s seq %d ack %d len %d\n", r.at.Format("15:04:05.000000"),
				r.who, r.src, r.dst, flagStr(r.flags), r.seq, r.ack, r.payload)
		}
	}
	return b.String()
}

func flagStr(f packet.TCPFlag) string {
	s := ""
	for _, x := range []struct {
		f packet.TCPFlag
		n string
	}{{packet.TCPSyn, "S"}, {packet.TCPFin, "F"}, {packet.TCPRst, "R"}, {packet.TCPPsh, "P"}, {packet.TCPAck, "."}} {
		if f&x.f != 0 {
			s += x.n
		}
	}
	return fmt.Sprintf("[%s]", s)
}
