// Package localtailnet is the helper's control mode: a complete local tailnet on a loopback
// address.
//
// It runs Tailscale's own testcontrol server (the control plane Tailscale's tsnet and
// integration tests use), a DERP relay and a STUN server, prints one JSON line describing them
// on stdout, and serves until stdin reaches EOF or the process gets SIGTERM/SIGINT. The tsproc
// Python library uses it for its test fixture and its offline demo.
//
// It knows nothing of the node mode or the control channel: Run gets the logger and the
// parent watch it needs from the caller.
package localtailnet

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"tailscale.com/derp/derpserver"
	"tailscale.com/tailcfg"
	"tailscale.com/tstest/integration/testcontrol"
	"tailscale.com/types/key"
	"tailscale.com/types/logger"
	"tailscale.com/util/dnsname"

	"github.com/tsproc/tsproc/helper/internal/jsonlog"
)

// controlShutdownTimeout bounds how long a clean shutdown may take before connections are
// closed forcibly. The Python side waits a little longer than this before it kills us.
const controlShutdownTimeout = 1500 * time.Millisecond

// controlConfig configures a local tailnet.
type controlConfig struct {
	jl               *jsonlog.Logger // where every line goes (redacting auth keys)
	listenAddr       netip.Addr      // loopback address for control (HTTP), DERP (HTTPS) and STUN (UDP)
	authKey          string          // if non-empty, nodes must log in with this key
	interactiveLogin bool            // new nodes must complete an auth URL (testcontrol's RequireAuth)
	magicDNSDomain   string          // MagicDNS suffix, e.g. "tailnet.test"
	verbose          bool            // log control, DERP and STUN debug messages
	https            bool            // also issue certificates and play Funnel's ingress (https.go)
}

// Info is the JSON line the control mode prints once everything listens.
type Info struct {
	ControlURL       string `json:"control_url"`
	DERPPort         int    `json:"derp_port"`
	STUNPort         int    `json:"stun_port"`
	MagicDNSSuffix   string `json:"magic_dns_suffix"`
	RequireAuthKey   bool   `json:"require_auth_key"`
	InteractiveLogin bool   `json:"interactive_login"`
	PID              int    `json:"pid"`
	*HTTPSInfo              // with --https only
}

// errStdinClosed is the cancellation cause when the parent closes our stdin.
var errStdinClosed = errors.New("stdin closed")

// Run is `tsproc-helper control args...`: it serves until stdin reaches EOF, a signal
// arrives or watchParent reports the parent gone, logs to jl, and returns the exit code.
func Run(args []string, jl *jsonlog.Logger, watchParent func(gone func(reason string))) int {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	// Die with the parent even if it cannot close our stdin (SIGKILL, crash) or something else
	// holds the write end. Set up first, so that a parent dying while we start is noticed too.
	// (watchParent, shared with node mode, watches the parent process rather than using
	// PR_SET_PDEATHSIG, which fires when the parent's forking *thread* exits: trio forks from
	// a worker thread that it retires after 10 idle seconds, and SIGKILL then killed us 10 s
	// after every start.)
	watchParent(func(reason string) { cancel(errors.New(reason)) })

	fs := flag.NewFlagSet("tsproc-helper control", flag.ContinueOnError)
	listenAddr := fs.String("listen-addr", "127.0.0.1",
		"loopback IP `address` to serve control (HTTP), DERP (HTTPS) and STUN (UDP) on, each on an ephemeral port; non-loopback addresses are refused")
	authKey := fs.String("require-auth-key", "",
		"nodes must log in with this auth `key`; \"-\" reads the key from the first line of stdin, so that it never appears in argv")
	interactive := fs.Bool("require-interactive-login", false,
		"new nodes get an auth URL <control_url>/auth/<id>; a plain HTTP GET of it completes their login (with --require-auth-key, nodes need the key and the login)")
	magicDNS := fs.String("magic-dns-domain", "tailnet.test", "MagicDNS `suffix` of the tailnet's node names")
	verbose := fs.Bool("verbose", false, "log control, DERP and STUN debug messages to stderr")
	https := fs.Bool("https", false,
		"also run an ACME server and its DNS server, so that nodes get HTTPS certificates for <host>.<magic-dns-domain>, and a Funnel ingress node with loopback ports standing for the internet; nodes get the https and funnel capabilities")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: tsproc-helper control [flags]\n\n"+
			"Runs a local tailnet (control server, DERP relay, STUN server) on a loopback address,\n"+
			"prints one JSON line describing it on stdout and serves until stdin reaches EOF or\n"+
			"SIGTERM/SIGINT arrives.\n\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2 // fs.Parse has printed the error and the usage
	}
	usageError := func(format string, args ...any) int {
		jl.Log("error", "control", fmt.Sprintf(format, args...))
		fs.Usage()
		return 2
	}
	if fs.NArg() > 0 {
		return usageError("unexpected arguments: %q", fs.Args())
	}
	addr, err := parseLoopbackAddr(*listenAddr)
	if err != nil {
		return usageError("--listen-addr: %v", err)
	}
	// MagicDNS names are lower case; testcontrol appends the suffix to node names verbatim.
	domain := strings.TrimSuffix(strings.ToLower(*magicDNS), ".")
	if err := dnsname.ValidHostname(domain); err != nil {
		return usageError("--magic-dns-domain %q is not a valid DNS name: %v", *magicDNS, err)
	}

	stdin := bufio.NewReader(os.Stdin)
	if *authKey == "-" {
		// The key comes on stdin so that it is visible neither in argv (ps, /proc/PID/cmdline)
		// nor in our environment. If stdin ends right after the key, the EOF watcher below
		// stops the server as soon as it is up, which is what an EOF asks for.
		line, err := stdin.ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return usageError("--require-auth-key -: reading stdin: %v", err)
		}
		*authKey = strings.TrimSpace(line)
		if *authKey == "" {
			return usageError("--require-auth-key -: no key on the first line of stdin")
		}
	}

	cfg := controlConfig{
		jl:               jl,
		listenAddr:       addr,
		authKey:          *authKey,
		interactiveLogin: *interactive,
		magicDNSDomain:   domain,
		verbose:          *verbose,
		https:            *https,
	}
	// testcontrol and the HTTP/2 server inside its Noise channel log through the standard log
	// package; make those lines JSON like all others, and keep the auth key out of them.
	log.SetFlags(0)
	log.SetOutput(logger.FuncWriter(cfg.logf("debug", "control")))

	// Only now: until the servers run, the default action of these signals (exit at once) is
	// right, and it must not be swallowed while we wait for the key on stdin.
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	// A shutdown that hangs must not leave a process behind.
	context.AfterFunc(ctx, func() {
		time.AfterFunc(controlShutdownTimeout+time.Second, func() {
			jl.Log("error", "control", "shutdown did not finish in time; exiting anyway")
			os.Exit(1)
		})
	})
	go func() {
		// The parent holds the write end of our stdin for as long as it wants us running.
		_, _ = io.Copy(io.Discard, stdin)
		cancel(errStdinClosed)
	}()

	err = serveLocalTailnet(ctx, cfg, func(info Info) {
		b, _ := json.Marshal(info)
		// os.Stdout is unbuffered: the line reaches the pipe in one write, no flush needed.
		if _, err := os.Stdout.Write(append(b, '\n')); err != nil {
			jl.Log("error", "control", fmt.Sprintf("writing the JSON line to stdout: %v", err))
			cancel(err)
		}
	})
	if err != nil {
		jl.Log("error", "control", err.Error())
		return 1
	}
	return 0
}

// parseLoopbackAddr parses s as a loopback IP address. Anything else is refused: the local
// tailnet has no authentication of its own beyond the optional auth key, so it must not be
// reachable from other machines.
func parseLoopbackAddr(s string) (netip.Addr, error) {
	addr, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address (use 127.0.0.1 or ::1)", s)
	}
	addr = addr.Unmap()
	if !addr.IsLoopback() || addr.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%v is not a loopback address; the local tailnet serves only on loopback (127.0.0.0/8 or ::1)", addr)
	}
	return addr, nil
}

// logf returns a logger for source at level, or a discarding one for debug messages when not
// verbose. Every logger removes the auth key: testcontrol logs whole requests in some paths,
// and a user-chosen key need not look like tskey-… for redact to catch it.
func (cfg controlConfig) logf(level, source string) logger.Logf {
	if level == "debug" && !cfg.verbose {
		return logger.Discard
	}
	logf := cfg.jl.Logf(level, source)
	if cfg.authKey == "" {
		return logf
	}
	return func(format string, args ...any) {
		logf("%s", strings.ReplaceAll(fmt.Sprintf(format, args...), cfg.authKey, "REDACTED"))
	}
}

// serveLocalTailnet runs a control server, a DERP relay and a STUN server on cfg.listenAddr
// until ctx is done, then shuts them down within about controlShutdownTimeout. It calls ready,
// once, when all three are listening. It returns an error if one cannot start or stops
// serving early; cancellation of ctx is a clean stop and returns nil.
func serveLocalTailnet(ctx context.Context, cfg controlConfig, ready func(Info)) error {
	infof := cfg.logf("info", "control")
	errorf := cfg.logf("error", "control")
	// Requests, including the long-lived hijacked ones (DERP, the Noise channel to control)
	// that http.Server.Shutdown does not track, get this context, so that shutting down also
	// ends their handlers.
	baseCtx, cancelBase := context.WithCancel(context.Background())
	// cleanups stop what has been started, in reverse order, all within one shared deadline,
	// whether we stop because of ctx or because something failed to start.
	var cleanups []func(context.Context)
	defer func() {
		cancelBase()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), controlShutdownTimeout)
		defer cancel()
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i](shutdownCtx)
		}
	}()

	// serveErr receives the first error of a server that stopped on its own.
	serveErr := make(chan error, 2)

	// STUN.
	stunSrv, err := listenSTUN(cfg.listenAddr, cfg.logf("debug", "stun"))
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func(context.Context) { stunSrv.Close() })

	// DERP, over HTTPS like every real DERP server, so that nodes need no debug knob.
	derpLogf := cfg.logf("debug", "derp")
	derpLn, err := net.Listen("tcp", netip.AddrPortFrom(cfg.listenAddr, 0).String())
	if err != nil {
		return fmt.Errorf("listen DERP: %w", err)
	}
	cert, certHash, err := selfSignedCert(cfg.listenAddr)
	if err != nil {
		derpLn.Close()
		return err
	}
	derp := derpserver.New(key.NewNode(), derpLogf)
	derpMux := http.NewServeMux()
	// WebSocket support as in RunDERPAndSTUN, for clients (browser WASM) that can only reach
	// DERP that way.
	derpMux.Handle("/derp", derpserver.AddWebSocketSupport(derp, derpserver.Handler(derp)))
	derpMux.HandleFunc("/derp/", derpserver.ProbeHandler) // /derp/probe, /derp/latency-check
	derpMux.HandleFunc("/generate_204", derpserver.ServeNoContent)
	derpHTTP := &http.Server{
		Handler:           recoverPanics(derpMux, errorf),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          logger.StdLogger(derpLogf),
		BaseContext:       func(net.Listener) context.Context { return baseCtx },
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}},
		// DERP upgrades an HTTP/1.1 connection; a non-nil empty map turns HTTP/2 off.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	go func() {
		if err := derpHTTP.ServeTLS(derpLn, "", ""); !errors.Is(err, http.ErrServerClosed) {
			serveErr <- fmt.Errorf("DERP server: %w", err)
		}
	}()
	cleanups = append(cleanups, func(ctx context.Context) {
		shutdownHTTP(ctx, derpHTTP)
		derp.Close() // closes the hijacked client connections Shutdown does not track
	})
	derpPort := derpLn.Addr().(*net.TCPAddr).Port

	// Control.
	controlLn, err := net.Listen("tcp", netip.AddrPortFrom(cfg.listenAddr, 0).String())
	if err != nil {
		return fmt.Errorf("listen control: %w", err)
	}
	controlURL := "http://" + controlLn.Addr().String()
	control := &testcontrol.Server{
		Logf:           cfg.logf("debug", "control"),
		DERPMap:        localDERPMap(cfg.listenAddr, derpPort, stunSrv.port(), certHash),
		DNSConfig:      &tailcfg.DNSConfig{Proxied: true},
		MagicDNSDomain: cfg.magicDNSDomain,
		// Without it, magicsock skips its disco-key fast paths for peers it thinks offline,
		// which slows down reconnection after a peer restarts.
		AllOnline:       true,
		RequireAuthKey:  cfg.authKey,
		RequireAuth:     cfg.interactiveLogin,
		ExplicitBaseURL: controlURL, // auth URLs must carry our real address
		// Non-nil: a node that advertises tags at registration gets them (like a tailnet whose
		// ACL lets anyone own any tag), so tagged nodes can be tested offline.
		TagOwners: map[string][]string{},
		// No "https" or "funnel" capability: testcontrol grants both by default, but nothing
		// here can issue certificates (tsnet would try ACME against the internet). A real
		// control server grants "https" only when HTTPS is enabled for the tailnet.
		DefaultNodeCapabilities: &tailcfg.NodeCapMap{},
	}
	var https *localHTTPS
	if cfg.https {
		if https, err = startLocalHTTPS(cfg, control); err != nil {
			return err
		}
		cleanups = append(cleanups, https.closeCA)
	}
	controlHTTP := &http.Server{
		Handler:           recoverPanics(controlRoutes(control), errorf),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          logger.StdLogger(cfg.logf("debug", "control")),
		BaseContext:       func(net.Listener) context.Context { return baseCtx },
	}
	go func() {
		if err := controlHTTP.Serve(controlLn); !errors.Is(err, http.ErrServerClosed) {
			serveErr <- fmt.Errorf("control server: %w", err)
		}
	}()
	cleanups = append(cleanups, func(ctx context.Context) { shutdownHTTP(ctx, controlHTTP) })
	// Advertised subnet routes are approved as they come, like a tailnet whose policy
	// auto-approves every route (routes.go).
	approveCtx, stopApprover := context.WithCancel(baseCtx)
	approverDone := make(chan struct{})
	go func() { defer close(approverDone); runRouteApprover(approveCtx, control, cfg.logf("info", "control")) }()
	cleanups = append(cleanups, func(context.Context) { stopApprover(); <-approverDone })
	var hinfo *HTTPSInfo
	if https != nil {
		// The ingress node needs the control server, so it comes last.
		if hinfo, err = https.startIngress(ctx, controlURL, control); err != nil {
			return err
		}
		cleanups = append(cleanups, https.closeIngress)
	}

	// Everything listens already (the listeners exist); the servers merely accept later.
	if ctx.Err() != nil {
		return nil
	}
	info := Info{
		ControlURL:       controlURL,
		DERPPort:         derpPort,
		STUNPort:         stunSrv.port(),
		MagicDNSSuffix:   cfg.magicDNSDomain,
		RequireAuthKey:   cfg.authKey != "",
		InteractiveLogin: cfg.interactiveLogin,
		PID:              os.Getpid(),
		HTTPSInfo:        hinfo,
	}
	infof("local tailnet up: control %s, DERP %v (HTTPS), STUN %v (UDP), auth key required: %v, interactive login: %v",
		controlURL, derpLn.Addr(), stunSrv.pc.LocalAddr(), info.RequireAuthKey, info.InteractiveLogin)
	ready(info)

	select {
	case <-ctx.Done():
		infof("shutting down: %v", context.Cause(ctx))
		return nil
	case err := <-serveErr:
		return err
	}
}

// shutdownHTTP stops srv gracefully, then forcibly once ctx is done.
func shutdownHTTP(ctx context.Context, srv *http.Server) {
	if err := srv.Shutdown(ctx); err != nil {
		srv.Close()
	}
}

// localDERPMap is the DERP map control hands to nodes: one region with our DERP and STUN
// server.
func localDERPMap(addr netip.Addr, derpPort, stunPort int, certHash string) *tailcfg.DERPMap {
	ipv4, ipv6 := "none", "none" // "none" stops nodes from resolving HostName via DNS
	if addr.Is4() {
		ipv4 = addr.String()
	} else {
		ipv6 = addr.String()
	}
	return &tailcfg.DERPMap{
		// Nodes must never fall back to Tailscale's public DERP servers.
		OmitDefaultRegions: true,
		Regions: map[int]*tailcfg.DERPRegion{
			1: {
				RegionID:   1,
				RegionCode: "local",
				RegionName: "tsproc local",
				Nodes: []*tailcfg.DERPNode{{
					Name:     "1a",
					RegionID: 1,
					HostName: addr.String(),
					// A pin of our self-signed certificate: nodes verify it exactly as they
					// verify a real DERP server's, without InsecureForTests.
					CertName:   "sha256-raw:" + certHash,
					IPv4:       ipv4,
					IPv6:       ipv6,
					DERPPort:   derpPort,
					STUNPort:   stunPort,
					STUNTestIP: addr.String(),
				}},
			},
		},
	}
}

// selfSignedCert makes a fresh certificate for the DERP server's IP address and returns it with
// the hex SHA-256 of its DER encoding, which nodes pin through the DERP map.
func selfSignedCert(addr netip.Addr) (tls.Certificate, string, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, "", fmt.Errorf("DERP certificate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, "", fmt.Errorf("DERP certificate serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: addr.String()},
		IPAddresses:  []net.IP{addr.AsSlice()},
		// Backdated so that a node whose clock is slightly behind still accepts it.
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		return tls.Certificate{}, "", fmt.Errorf("DERP certificate: %w", err)
	}
	sum := sha256.Sum256(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}, hex.EncodeToString(sum[:]), nil
}

// controlRoutes is the router in front of testcontrol. testcontrol is written for tests: it
// answers an unknown path by panicking in a new goroutine, which no recover can catch and which
// kills the process. So only the paths it serves safely reach it.
//
// /machine/… is deliberately not among them: clients send those requests only inside the Noise
// channel opened by /ts2021, which testcontrol routes to itself directly. Sent in plain HTTP,
// testcontrol cannot serve them (there is no machine key) and some of them
// (/machine/webclient/…, /machine/tka/…) crash it.
func controlRoutes(control *testcontrol.Server) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/key", control)          // the server's public keys, fetched before /ts2021
	mux.Handle("/ts2021", control)       // upgrade to the Noise channel that carries /machine/…
	mux.Handle("/generate_204", control) // connectivity checks
	mux.Handle("/c2n/", control)         // answers to control-to-node requests; answers errors itself
	mux.HandleFunc("GET /auth/{id}", func(w http.ResponseWriter, r *http.Request) {
		// Stands in for the browser login of a real control server: visiting the URL is the
		// login. CompleteAuth unblocks the node's pending register request.
		if !control.CompleteAuth(r.URL.Path) {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "Login complete. The node is now authorized; you can close this page.\n")
	})
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok")
	})
	mux.HandleFunc("/", http.NotFound)
	return mux
}

// recoverPanics turns a panic in h into a logged 500 answer, so that a bad request cannot end
// the process. (It cannot catch testcontrol's panics in new goroutines; controlRoutes keeps
// requests that cause those away.)
func recoverPanics(h http.Handler, errorf logger.Logf) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			p := recover()
			if p == nil {
				return
			}
			if p == http.ErrAbortHandler {
				panic(p) // net/http's way to abort a response; it handles this one quietly
			}
			errorf("panic serving %s %s: %v", r.Method, r.URL.Path, p)
			http.Error(w, "internal server error", http.StatusInternalServerError)
		}()
		h.ServeHTTP(w, r)
	})
}
