// Command gobench is the pure-Go line of tsproc's benchmarks (benchmarks/README.md): the same
// two-node workloads as benchmarks/peer.py, written against tsnet directly, or against plain
// loopback TCP for the kernel ceiling.
//
//	gobench server -net tsnet|tcp [-control URL -hostname H]
//	gobench client -net tsnet|tcp -target IP -bulk-port P -echo-port P -config JSON [-control URL -hostname H]
//
// Both speak JSON lines on stdout to benchmarks/run.py. The client stops at each phase
// boundary with {"event":"mark","name":...} and waits for a line on stdin, so that the runner
// can read /proc for every process of the line at the same moments for every line.
//
// The tsnet set-up mirrors what tsproc-helper does for a node on a loopback control server
// (helper/start.go): no log upload, netns off, ephemeral, state in a directory. The runner
// gives both lines the same environment (TS_DISABLE_PORTMAPPER, TS_DEBUG_OMIT_LOCAL_ADDRS and,
// for the DERP path, TS_DEBUG_ALWAYS_USE_DERP).
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"sync"
	"time"

	"tailscale.com/envknob"
	"tailscale.com/logtail"
	"tailscale.com/net/netns"
	"tailscale.com/tsnet"
	"tailscale.com/types/logger"
)

const (
	tailnetBulkPort = 5001
	tailnetEchoPort = 5002
	// readBufSize is the servers' read buffer: big enough that the reader is never the limit.
	readBufSize = 256 << 10
	// settleTime follows the closing of the idle connections, as in peer.py.
	settleTime = 500 * time.Millisecond
	// closeGrace bounds tsnet's Close at exit.
	closeGrace = 3 * time.Second
)

// config is the workload, shared with peer.py (benchmarks/workloads.py documents each field).
type config struct {
	BulkSeconds    float64  `json:"bulk_seconds"`
	BulkStreams    int      `json:"bulk_streams"`
	ChunkSize      int      `json:"chunk_size"`
	RRCount        int      `json:"rr_count"`
	RRWarmup       int      `json:"rr_warmup"`
	RRSize         int      `json:"rr_size"`
	SetupCount     int      `json:"setup_count"`
	IdleConns      int      `json:"idle_conns"`
	DialParallel   int      `json:"dial_parallel"`
	StartupRepeats int      `json:"startup_repeats"`
	WantDirect     bool     `json:"want_direct"`
	DirectWait     float64  `json:"direct_wait"`
	Phases         []string `json:"phases"`
}

func (c config) has(phase string) bool { return slices.Contains(c.Phases, phase) }

var out = json.NewEncoder(os.Stdout)
var stdin = bufio.NewReader(os.Stdin)

func emit(v map[string]any) {
	if err := out.Encode(v); err != nil {
		os.Exit(1)
	}
}

func fatalf(format string, args ...any) {
	emit(map[string]any{"event": "error", "error": fmt.Sprintf(format, args...)})
	os.Exit(1)
}

// mark tells the runner a phase boundary was reached and waits until it has taken its
// measurements.
func mark(name string) {
	emit(map[string]any{"event": "mark", "name": name})
	if _, err := stdin.ReadString('\n'); err != nil {
		os.Exit(1)
	}
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: gobench server|client [flags]")
		os.Exit(2)
	}
	mode := os.Args[1]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	network := fs.String("net", "tsnet", "tsnet or tcp")
	controlURL := fs.String("control", "", "control URL of the local tailnet")
	hostname := fs.String("hostname", "gobench", "tailnet hostname")
	target := fs.String("target", "", "server address to dial (client)")
	bulkPort := fs.Int("bulk-port", tailnetBulkPort, "server's bulk port (client)")
	echoPort := fs.Int("echo-port", tailnetEchoPort, "server's echo port (client)")
	cfgJSON := fs.String("config", "{}", "workload configuration as JSON (client)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	fs.Parse(os.Args[2:])
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fatalf("cpuprofile: %v", err)
		}
		pprof.StartCPUProfile(f)
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	envknob.SetNoLogsNoSupport()
	logtail.Disable()
	netns.SetEnabled(false) // the control server is on loopback, as in helper/start.go
	n := &netw{kind: *network, controlURL: *controlURL}
	switch mode {
	case "server":
		runServer(n, *hostname)
	case "client":
		var cfg config
		if err := json.Unmarshal([]byte(*cfgJSON), &cfg); err != nil {
			fatalf("config: %v", err)
		}
		runClient(n, *hostname, *target, *bulkPort, *echoPort, cfg)
	default:
		fatalf("unknown mode %q", mode)
	}
}

// netw is where connections come from: a tsnet server, or the host's loopback.
type netw struct {
	kind       string
	controlURL string
	srv        *tsnet.Server
	dir        string
}

// start brings a tsnet node up and returns how long it took from creating the server.
func (n *netw) start(hostname string) time.Duration {
	if n.kind != "tsnet" {
		return 0
	}
	srv, dir, took, err := startNode(n.controlURL, hostname)
	if err != nil {
		fatalf("starting %s: %v", hostname, err)
	}
	n.srv, n.dir = srv, dir
	return took
}

func startNode(controlURL, hostname string) (*tsnet.Server, string, time.Duration, error) {
	dir, err := os.MkdirTemp("", "gobench-")
	if err != nil {
		return nil, "", 0, err
	}
	t0 := time.Now()
	srv := &tsnet.Server{
		Hostname:   hostname,
		Dir:        dir,
		ControlURL: controlURL,
		Ephemeral:  true,
		Logf:       logger.Discard,
		UserLogf:   logger.Discard,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := srv.Up(ctx); err != nil {
		srv.Close()
		os.RemoveAll(dir)
		return nil, "", 0, err
	}
	return srv, dir, time.Since(t0), nil
}

func (n *netw) close() {
	if n.srv != nil {
		// tsnet's Close can block for good after many connections: netstack aborts every
		// endpoint still registered (TIME_WAIT ones too), each abort queues a RST, and
		// nothing drains the queue any more. tsproc-helper bounds its cleanup the same way.
		done := make(chan struct{})
		go func() { n.srv.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(closeGrace):
			fmt.Fprintf(os.Stderr, "gobench: tsnet Close did not return within %v; exiting anyway\n", closeGrace)
		}
		os.RemoveAll(n.dir)
	}
}

func (n *netw) listen(port int) net.Listener {
	var ln net.Listener
	var err error
	if n.kind == "tsnet" {
		ln, err = n.srv.Listen("tcp", ":"+strconv.Itoa(port))
	} else {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		fatalf("listen: %v", err)
	}
	return ln
}

func (n *netw) dial(ctx context.Context, host string, port int) (net.Conn, error) {
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	if n.kind == "tsnet" {
		return n.srv.Dial(ctx, "tcp", addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// peer returns what the node's status says about the peer with address ip.
func (n *netw) peer(ip string) (found bool, relay, curAddr string) {
	if n.kind != "tsnet" {
		return true, "", "loopback"
	}
	lc, err := n.srv.LocalClient()
	if err != nil {
		fatalf("local client: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := lc.Status(ctx)
	if err != nil {
		fatalf("status: %v", err)
	}
	want, _ := netip.ParseAddr(ip)
	for _, ps := range st.Peer {
		for _, a := range ps.TailscaleIPs {
			if a == want {
				return true, ps.Relay, ps.CurAddr
			}
		}
	}
	return false, "", ""
}

func port(ln net.Listener) int { return ln.Addr().(*net.TCPAddr).Port }

// runServer serves the bulk port (count bytes to EOF, answer the count as 8 bytes) and the
// echo port until stdin reaches EOF.
func runServer(n *netw, hostname string) {
	took := n.start(hostname)
	bulk, echo := n.listen(tailnetBulkPort), n.listen(tailnetEchoPort)
	ready := map[string]any{"event": "ready", "pid": os.Getpid(), "startup_s": took.Seconds()}
	if n.kind == "tsnet" {
		ip4, _ := n.srv.TailscaleIPs()
		ready["target"] = ip4.String()
		ready["bulk_port"], ready["echo_port"] = tailnetBulkPort, tailnetEchoPort
	} else {
		ready["target"] = "127.0.0.1"
		ready["bulk_port"], ready["echo_port"] = port(bulk), port(echo)
	}
	go serve(bulk, serveBulk)
	go serve(echo, serveEcho)
	emit(ready)
	io.Copy(io.Discard, os.Stdin)
	bulk.Close()
	echo.Close()
	n.close()
}

func serve(ln net.Listener, handler func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			handler(c)
		}()
	}
}

func serveBulk(c net.Conn) {
	buf := make([]byte, readBufSize)
	var total uint64
	for {
		k, err := c.Read(buf)
		total += uint64(k)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				return
			}
			break
		}
	}
	var answer [8]byte
	binary.BigEndian.PutUint64(answer[:], total)
	c.Write(answer[:])
}

func serveEcho(c net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		k, err := c.Read(buf)
		if k > 0 {
			if _, werr := c.Write(buf[:k]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

type client struct {
	n                  *netw
	target             string
	bulkPort, echoPort int
	cfg                config
}

func runClient(n *netw, hostname, target string, bulkPort, echoPort int, cfg config) {
	took := n.start(hostname)
	defer n.close()
	emit(map[string]any{"event": "hello", "pid": os.Getpid(), "startup_s": took.Seconds()})
	c := &client{n: n, target: target, bulkPort: bulkPort, echoPort: echoPort, cfg: cfg}
	result := map[string]any{"event": "result"}

	pathInfo := c.warmUp()
	result["path_before"] = pathInfo
	mark("idle")

	// Idle connections first, on fresh processes, as in peer.py.
	if cfg.has("idle") {
		mark("conns_before")
		conns := c.openIdle()
		mark("conns_open")
		for _, conn := range conns {
			conn.Close()
		}
		result["idle_conns"] = len(conns)
		time.Sleep(settleTime) // let the teardown of 1,000 connections finish
	}

	if cfg.has("bulk") {
		for _, streams := range []int{1, cfg.BulkStreams} {
			name := "bulk" + strconv.Itoa(streams)
			mark(name + "_start")
			moved, secs := c.bulk(streams)
			mark(name + "_end")
			result[name] = map[string]any{"bytes": moved, "seconds": secs, "streams": streams}
		}
	}

	if cfg.has("rr") {
		mark("rr_start")
		result["rr_us"] = c.roundTrips()
		mark("rr_end")
	}

	if cfg.has("setup") {
		mark("setup_start")
		result["setup_us"] = c.setups()
		mark("setup_end")
	}

	startups := []float64{took.Seconds()}
	if n.kind == "tsnet" && cfg.has("startup") {
		for i := range cfg.StartupRepeats {
			srv, dir, d, err := startNode(n.controlURL, hostname+"-s"+strconv.Itoa(i))
			if err != nil {
				fatalf("start-up repeat: %v", err)
			}
			startups = append(startups, d.Seconds())
			srv.Close()
			os.RemoveAll(dir)
		}
	}
	result["startup_s"] = startups
	result["path_after"] = c.path()
	emit(result)
}

func (c *client) path() map[string]any {
	_, relay, cur := c.n.peer(c.target)
	return map[string]any{"relay": relay, "cur_addr": cur, "direct": cur != ""}
}

// warmUp waits until the node knows the peer's home relay (a dial before that waits 5 s for
// a handshake retry), echoes until a connection works and, for the direct path, until
// magicsock has a direct address.
func (c *client) warmUp() map[string]any {
	deadline := time.Now().Add(30 * time.Second)
	for {
		found, relay, _ := c.n.peer(c.target)
		if found && (relay != "" || c.n.kind != "tsnet") {
			break
		}
		if time.Now().After(deadline) {
			fatalf("peer %s not in status with a home relay", c.target)
		}
		time.Sleep(20 * time.Millisecond)
	}
	conn := c.mustDial(c.echoPort)
	defer conn.Close()
	directBy := time.Now().Add(time.Duration(c.cfg.DirectWait * float64(time.Second)))
	msg := make([]byte, 64)
	for {
		if _, err := conn.Write(msg); err != nil {
			fatalf("warm-up write: %v", err)
		}
		if _, err := io.ReadFull(conn, msg); err != nil {
			fatalf("warm-up read: %v", err)
		}
		_, _, cur := c.n.peer(c.target)
		if !c.cfg.WantDirect || cur != "" || time.Now().After(directBy) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return c.path()
}

func (c *client) mustDial(port int) net.Conn {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := c.n.dial(ctx, c.target, port)
	if err != nil {
		fatalf("dial %s:%d: %v", c.target, port, err)
	}
	return conn
}

// bulk sends for cfg.BulkSeconds on each of streams connections and returns the bytes the
// server counted and the time from the first write to the last count.
func (c *client) bulk(streams int) (uint64, float64) {
	conns := make([]net.Conn, streams)
	for i := range conns {
		conns[i] = c.mustDial(c.bulkPort)
	}
	chunk := make([]byte, c.cfg.ChunkSize)
	dur := time.Duration(c.cfg.BulkSeconds * float64(time.Second))
	var wg sync.WaitGroup
	var mu sync.Mutex
	var total uint64
	t0 := time.Now()
	for _, conn := range conns {
		wg.Go(func() {
			defer conn.Close()
			for time.Since(t0) < dur {
				if _, err := conn.Write(chunk); err != nil {
					fatalf("bulk write: %v", err)
				}
			}
			conn.(interface{ CloseWrite() error }).CloseWrite()
			var answer [8]byte
			if _, err := io.ReadFull(conn, answer[:]); err != nil {
				fatalf("bulk answer: %v", err)
			}
			mu.Lock()
			total += binary.BigEndian.Uint64(answer[:])
			mu.Unlock()
		})
	}
	wg.Wait()
	return total, time.Since(t0).Seconds()
}

// roundTrips times cfg.RRCount request/response exchanges of cfg.RRSize bytes on one
// connection, after cfg.RRWarmup untimed ones.
func (c *client) roundTrips() []float64 {
	conn := c.mustDial(c.echoPort)
	defer conn.Close()
	msg := make([]byte, c.cfg.RRSize)
	samples := make([]float64, 0, c.cfg.RRCount)
	for i := range c.cfg.RRWarmup + c.cfg.RRCount {
		t0 := time.Now()
		if _, err := conn.Write(msg); err != nil {
			fatalf("rr write: %v", err)
		}
		if _, err := io.ReadFull(conn, msg); err != nil {
			fatalf("rr read: %v", err)
		}
		if i >= c.cfg.RRWarmup {
			samples = append(samples, float64(time.Since(t0).Nanoseconds())/1e3)
		}
	}
	return samples
}

// setups times cfg.SetupCount sequential connections: dial, a 1-byte echo, close.
func (c *client) setups() []float64 {
	samples := make([]float64, 0, c.cfg.SetupCount)
	one := make([]byte, 1)
	for range c.cfg.SetupCount {
		t0 := time.Now()
		conn := c.mustDial(c.echoPort)
		if _, err := conn.Write(one); err != nil {
			fatalf("setup write: %v", err)
		}
		if _, err := io.ReadFull(conn, one); err != nil {
			fatalf("setup read: %v", err)
		}
		conn.Close()
		samples = append(samples, float64(time.Since(t0).Nanoseconds())/1e3)
	}
	return samples
}

// openIdle opens cfg.IdleConns connections (each proven by a 1-byte echo), cfg.DialParallel
// at a time, and returns them open.
func (c *client) openIdle() []net.Conn {
	conns := make([]net.Conn, c.cfg.IdleConns)
	next := make(chan int)
	var wg sync.WaitGroup
	for range max(1, c.cfg.DialParallel) {
		wg.Go(func() {
			one := make([]byte, 1)
			for i := range next {
				conn := c.mustDial(c.echoPort)
				if _, err := conn.Write(one); err != nil {
					fatalf("idle write: %v", err)
				}
				if _, err := io.ReadFull(conn, one); err != nil {
					fatalf("idle read: %v", err)
				}
				conns[i] = conn
			}
		})
	}
	for i := range conns {
		next <- i
	}
	close(next)
	wg.Wait()
	return conns
}
