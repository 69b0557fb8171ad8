// Command gopeer is the soak's pure-Go tailnet peer (soak/README.md): a tsnet node, not a
// tsproc one, that serves the soak's framed TCP protocol and echoes its UDP datagrams, and
// dials the tsproc nodes with transfers of its own, so that not every end of the soak is
// tsproc.
//
//	gopeer -control URL -hostname H -port P -udp-port U -targets a,b,c [-workers N] [-seed S]
//
// It speaks JSON lines on stdout to soak/__main__.py: {"ev":"ready",...} once it is up, then one
// {"ev":"rec",...} per transfer end it saw (as client or server), one {"ev":"dial",...} per
// dial it made, and {"ev":"done"} once its workers have stopped after a "stop" line (or EOF) on
// stdin. A "go" line starts its workers. Times ("start", "end") are CLOCK_MONOTONIC seconds,
// the clock the host's trio and time.monotonic read, so that the host can set them against
// its fault windows and its nodes' helper restarts.
//
// The wire protocol is soak/protocol.py's: a 32-byte header ("SOAK", kind, 3 pad bytes, id,
// a, b; big-endian), then for kind 'B' a bytes of data and their sha256, answered by a status
// byte, b bytes and their sha256; for kind 'R' request/response exchanges (u32 length and
// payload, answered by u32 length, sha256 and the payload) ended by a u32 0xFFFFFFFF "bye";
// kind 'P' (a probe) carries nothing and is closed at once. Every transfer ends in exactly one
// recorded outcome: complete, error, eof_early (a clean EOF before the protocol was done),
// corrupt (a digest or length that does not match) or timeout.
//
// The tsnet set-up mirrors tsproc-helper's for a loopback control server (helper/start.go):
// no log upload, netns off, ephemeral, state in a temporary directory.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"tailscale.com/envknob"
	"tailscale.com/logtail"
	"tailscale.com/net/netns"
	"tailscale.com/tsnet"
	"tailscale.com/types/logger"
)

const (
	headerSize = 32
	digestSize = sha256.Size
	bye        = 0xFFFFFFFF
	poolSize   = 4 << 20
	// idBase keeps this peer's transfer ids apart from the Python host's.
	idBase = 1 << 62
	// closeGrace bounds tsnet's Close at exit (see benchmarks/gobench).
	closeGrace = 3 * time.Second
)

var (
	magic = []byte("SOAK")
	// pool is the random data transfers send slices of (at random offsets, so that a
	// duplicated or reordered segment changes the digest).
	pool []byte
	out  = json.NewEncoder(os.Stdout)
	mu   sync.Mutex // serializes out
)

func emit(v map[string]any) {
	mu.Lock()
	defer mu.Unlock()
	if err := out.Encode(v); err != nil {
		os.Exit(1)
	}
}

// record reports how one transfer ended on this side: peer is the tsproc end's IP, start and
// end (monotonic seconds) the connection's life on this side (for a failed dial, the dial's).
func record(id uint64, role, kind, outcome string, sentAll bool, verified int64, detail string,
	peer string, start float64) {
	emit(map[string]any{"ev": "rec", "id": id, "role": role, "kind": kind,
		"outcome": outcome, "sent_all": sentAll, "verified": verified, "detail": detail,
		"peer": peer, "start": start, "end": monotonic()})
}

// monotonic is CLOCK_MONOTONIC in seconds: the host's clock (Go's own monotonic reading is
// relative to an unexported origin).
func monotonic() float64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		fatal("clock_gettime: %v", err)
	}
	return float64(ts.Sec) + float64(ts.Nsec)/1e9
}

// peerIP is the IP of a connection's remote end.
func peerIP(c net.Conn) string {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
	return host
}

func main() {
	controlURL := flag.String("control", "", "control URL of the local tailnet")
	hostname := flag.String("hostname", "gopeer", "tailnet hostname")
	port := flag.Int("port", 7000, "TCP service port")
	udpPort := flag.Int("udp-port", 7001, "UDP echo port")
	targets := flag.String("targets", "", "comma-separated tsproc nodes to dial")
	workers := flag.Int("workers", 2, "concurrent client transfers")
	seed := flag.Uint64("seed", 1, "random seed")
	flag.Parse()

	rng := rand.New(rand.NewPCG(*seed, 0x50a4))
	pool = make([]byte, poolSize)
	for i := range pool {
		pool[i] = byte(rng.Uint32())
	}
	envknob.SetNoLogsNoSupport()
	logtail.Disable()
	netns.SetEnabled(false) // the control server is on loopback, as in helper/start.go

	dir, err := os.MkdirTemp("", "soak-gopeer-")
	if err != nil {
		fatal("tempdir: %v", err)
	}
	defer os.RemoveAll(dir)
	srv := &tsnet.Server{
		Hostname: *hostname, Dir: dir, ControlURL: *controlURL, Ephemeral: true,
		Logf: logger.Discard, UserLogf: logger.Discard,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	status, err := srv.Up(ctx)
	cancel()
	if err != nil {
		fatal("up: %v", err)
	}
	ln, err := srv.Listen("tcp", ":"+strconv.Itoa(*port))
	if err != nil {
		fatal("listen: %v", err)
	}
	ip4, _ := srv.TailscaleIPs()
	pc, err := srv.ListenPacket("udp4", net.JoinHostPort(ip4.String(), strconv.Itoa(*udpPort)))
	if err != nil {
		fatal("listen udp: %v", err)
	}
	ips := []string{}
	for _, ip := range status.TailscaleIPs {
		ips = append(ips, ip.String())
	}
	emit(map[string]any{"ev": "ready", "pid": os.Getpid(), "ips": ips})

	var servers sync.WaitGroup
	servers.Add(2)
	go func() { defer servers.Done(); serveTCP(ln) }()
	go func() { defer servers.Done(); serveUDP(pc) }()

	stdin := bufio.NewReader(os.Stdin)
	line, _ := stdin.ReadString('\n')
	for command(srv, line) { // test commands (probe.go)
		line, _ = stdin.ReadString('\n')
	}
	stop := make(chan struct{})
	var clients sync.WaitGroup
	var names []string
	if t := strings.TrimSpace(*targets); t != "" {
		names = strings.Split(t, ",")
	}
	if strings.TrimSpace(line) == "go" && len(names) > 0 {
		c := &client{srv: srv, targets: names, port: *port}
		for w := range *workers {
			clients.Add(1)
			go func() {
				defer clients.Done()
				c.run(rand.New(rand.NewPCG(*seed, uint64(w)+1)), stop)
			}()
		}
		for {
			line, err := stdin.ReadString('\n')
			if err != nil || strings.TrimSpace(line) == "stop" {
				break
			}
		}
	}
	close(stop)
	clients.Wait()
	emit(map[string]any{"ev": "done", "dialed": dialed.Load()})
	ln.Close()
	pc.Close()
	servers.Wait()
	done := make(chan struct{})
	go func() { srv.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(closeGrace):
	}
}

func fatal(format string, args ...any) {
	emit(map[string]any{"ev": "error", "error": fmt.Sprintf(format, args...)})
	os.Exit(1)
}

var (
	nextID atomic.Uint64
	dialed atomic.Int64
	// handlers counts server connections still being served, so that the listener's close
	// waits for them.
	handlers sync.WaitGroup
)

// deadlineFor is how long a transfer of n bytes may take before it counts as stuck.
func deadlineFor(n int) time.Duration {
	return 45*time.Second + time.Duration(n/(256<<10))*time.Second
}

func serveTCP(ln net.Listener) {
	defer handlers.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		accepted := monotonic()
		handlers.Add(1)
		go func() {
			defer handlers.Done()
			defer c.Close()
			serveConn(c, accepted)
		}()
	}
}

// outcomeOf classifies an error that ended a transfer.
func outcomeOf(err error) (string, string) {
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof_early", err.Error()
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout", err.Error()
	}
	return "error", err.Error()
}

// session is one side of one transfer: it counts verified bytes and whether this side has
// sent all it ever will.
type session struct {
	c        net.Conn
	r        *bufio.Reader
	verified int64
	sentAll  bool
	peer     string  // the tsproc end's IP
	start    float64 // when the connection was made (monotonic seconds)
}

func (s *session) readFull(n int) ([]byte, error) {
	b := make([]byte, n)
	_, err := io.ReadFull(s.r, b)
	return b, err
}

// readToEOF expects the peer's clean end and nothing more.
func (s *session) readToEOF() error {
	n, err := io.Copy(io.Discard, s.r)
	if err != nil {
		return err
	}
	if n != 0 {
		return errCorrupt{fmt.Sprintf("%d bytes after the end of the protocol", n)}
	}
	return nil
}

type errCorrupt struct{ what string }

func (e errCorrupt) Error() string { return e.what }

// sendData writes n bytes from a random place of the pool, then their digest.
func (s *session) sendData(rng *rand.Rand, n int) error {
	h := sha256.New()
	for n > 0 {
		chunk := min(n, 64<<10)
		off := rng.IntN(poolSize - chunk)
		b := pool[off : off+chunk]
		h.Write(b)
		if _, err := s.c.Write(b); err != nil {
			return err
		}
		n -= chunk
	}
	_, err := s.c.Write(h.Sum(nil))
	return err
}

// receiveData reads n bytes and their digest; errCorrupt if they do not match.
func (s *session) receiveData(n int) error {
	h := sha256.New()
	if _, err := io.CopyN(h, s.r, int64(n)); err != nil {
		return err
	}
	digest, err := s.readFull(digestSize)
	if err != nil {
		return err
	}
	if !bytes.Equal(digest, h.Sum(nil)) {
		return errCorrupt{fmt.Sprintf("sha256 of %d bytes does not match", n)}
	}
	s.verified += int64(n)
	return nil
}

func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func serveConn(c net.Conn, accepted float64) {
	s := &session{c: c, r: bufio.NewReaderSize(c, 256<<10), peer: peerIP(c), start: accepted}
	c.SetDeadline(time.Now().Add(deadlineFor(0)))
	hdr, err := s.readFull(headerSize)
	if err != nil || !bytes.Equal(hdr[:4], magic) {
		return // a probe, a cancelled dial or a saturation connection: not a transfer
	}
	kind := string(hdr[4:5])
	id := binary.BigEndian.Uint64(hdr[8:])
	a := binary.BigEndian.Uint64(hdr[16:])
	b := binary.BigEndian.Uint64(hdr[24:])
	if kind == "P" {
		return
	}
	rng := rand.New(rand.NewPCG(id, 7))
	switch kind {
	case "B":
		c.SetDeadline(time.Now().Add(deadlineFor(int(a + b))))
		err = serveBulk(s, rng, int(a), int(b))
	case "R":
		c.SetDeadline(time.Now().Add(deadlineFor(int(a) * 16 << 10)))
		err = serveRR(s)
	default:
		err = errCorrupt{fmt.Sprintf("unknown kind %q", kind)}
	}
	finish(id, "server", kind, s, err)
}

func finish(id uint64, role, kind string, s *session, err error) {
	if err == nil {
		record(id, role, kind, "complete", s.sentAll, s.verified, "", s.peer, s.start)
		return
	}
	var ce errCorrupt
	if errors.As(err, &ce) {
		record(id, role, kind, "corrupt", s.sentAll, s.verified, ce.what, s.peer, s.start)
		return
	}
	outcome, detail := outcomeOf(err)
	record(id, role, kind, outcome, s.sentAll, s.verified, detail, s.peer, s.start)
}

func serveBulk(s *session, rng *rand.Rand, up, down int) error {
	err := s.receiveData(up)
	var ce errCorrupt
	if errors.As(err, &ce) {
		s.c.Write([]byte{0})
		return err
	}
	if err != nil {
		return err
	}
	if _, err := s.c.Write([]byte{1}); err != nil {
		return err
	}
	if err := s.sendData(rng, down); err != nil {
		return err
	}
	s.sentAll = true
	if err := closeWrite(s.c); err != nil {
		return err
	}
	return s.readToEOF()
}

func serveRR(s *session) error {
	for {
		lb, err := s.readFull(4)
		if err != nil {
			return err
		}
		n := binary.BigEndian.Uint32(lb)
		if n == bye {
			if _, err := s.c.Write(lb); err != nil {
				return err
			}
			s.sentAll = true
			if err := closeWrite(s.c); err != nil {
				return err
			}
			return s.readToEOF()
		}
		if n > 1<<20 {
			return errCorrupt{fmt.Sprintf("request of %d bytes", n)}
		}
		payload, err := s.readFull(int(n))
		if err != nil {
			return err
		}
		sum := sha256.Sum256(payload)
		reply := append(append(lb, sum[:]...), payload...)
		if _, err := s.c.Write(reply); err != nil {
			return err
		}
		s.verified += int64(n)
	}
}

// serveUDP echoes every datagram to its source; the sender checks sequence and digest.
func serveUDP(pc net.PacketConn) {
	buf := make([]byte, 65535)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		pc.WriteTo(buf[:n], addr)
	}
}

// client dials the tsproc nodes with bulk transfers and short connections.
type client struct {
	srv     *tsnet.Server
	targets []string
	port    int
}

func (c *client) run(rng *rand.Rand, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		target := c.targets[rng.IntN(len(c.targets))]
		up, down := 64+rng.IntN(256), 64+rng.IntN(256)
		if rng.IntN(3) == 0 {
			// A bulk transfer: 1 KiB to 2 MiB each way, log-uniform.
			up, down = 1<<(10+rng.IntN(11)), 1<<(10+rng.IntN(11))
		}
		c.bulk(rng, target, up, down)
	}
}

func (c *client) bulk(rng *rand.Rand, target string, up, down int) {
	id := idBase + nextID.Add(1)
	deadline := time.Now().Add(deadlineFor(up + down))
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	start := monotonic()
	conn, err := c.srv.Dial(ctx, "tcp", net.JoinHostPort(target, strconv.Itoa(c.port)))
	connected := monotonic()
	// Every dial's timing, whatever its end: the host judges slow ones against its faults.
	dial := map[string]any{"ev": "dial", "dst": target, "port": c.port, "start": start,
		"end": connected, "outcome": "connected", "detail": ""}
	if err != nil {
		dial["outcome"], dial["detail"] = "error", err.Error()
	}
	emit(dial)
	if err != nil {
		// No connection, so no transfer: the dial's failure is the outcome.
		outcome, detail := outcomeOf(err)
		if outcome == "eof_early" {
			outcome = "error"
		}
		record(id, "client", "B", "dial_"+outcome, false, 0, detail, target, start)
		return
	}
	dialed.Add(1)
	defer conn.Close()
	conn.SetDeadline(deadline)
	s := &session{c: conn, r: bufio.NewReaderSize(conn, 256<<10), peer: target, start: connected}
	finish(id, "client", "B", s, clientBulk(s, rng, id, up, down))
}

func clientBulk(s *session, rng *rand.Rand, id uint64, up, down int) error {
	hdr := make([]byte, headerSize)
	copy(hdr, magic)
	hdr[4] = 'B'
	binary.BigEndian.PutUint64(hdr[8:], id)
	binary.BigEndian.PutUint64(hdr[16:], uint64(up))
	binary.BigEndian.PutUint64(hdr[24:], uint64(down))
	if _, err := s.c.Write(hdr); err != nil {
		return err
	}
	if err := s.sendData(rng, up); err != nil {
		return err
	}
	s.sentAll = true
	st, err := s.readFull(1)
	if err != nil {
		return err
	}
	if st[0] != 1 {
		return errCorrupt{"the server's sha256 of the upload did not match"}
	}
	if err := s.receiveData(down); err != nil {
		return err
	}
	s.verified += int64(up) // the server vouched for the upload
	if err := closeWrite(s.c); err != nil {
		return err
	}
	return s.readToEOF()
}
