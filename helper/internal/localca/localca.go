// Package localca is an offline certificate authority for the local tailnet: Let's Encrypt's
// pebble ACME server, embedded, plus the DNS server its validation authority asks for DNS-01
// challenge records, both on a loopback address.
//
// Nodes get certificates from it by the same flow they use against Let's Encrypt: they ask the
// control server to publish a TXT record (testcontrol's /machine/set-dns, whose OnSetDNS hook
// calls [Server.AddTXT]), then ask the ACME server to validate it. Nothing in it ever resolves
// a name through the system or dials anything but its own DNS server on loopback.
package localca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"
)

// Logf is a printf-style logger.
type Logf func(format string, args ...any)

// Server is a running ACME server and its challenge DNS server.
type Server struct {
	dirURL   string
	rootPEM  []byte // the CA that issues the leaves
	trustPEM []byte // what an ACME client must trust: the ACME server's TLS certificate, then rootPEM
	dnsAddr  string

	acmeHTTP *http.Server
	dnsSrv   *dns.Server
	done     chan struct{} // closed when both servers' goroutines have returned

	mu  sync.Mutex
	txt map[string][]string // FQDN (lower case, trailing dot) → values
}

// pebbleEnv are the settings pebble reads from the environment when it is built: answer at
// once instead of sleeping up to 5 s before each validation, and never reject a good nonce
// on purpose (its default rejects 5 %, to exercise clients' retries).
var pebbleEnv = map[string]string{"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}

// Start starts the servers on addr, a loopback address, each on an ephemeral port. logf gets
// pebble's own log lines.
func Start(addr netip.Addr, logf Logf) (_ *Server, err error) {
	if !addr.IsLoopback() {
		return nil, fmt.Errorf("localca: %v is not a loopback address", addr)
	}
	s := &Server{txt: map[string][]string{}, done: make(chan struct{})}
	var closers []func()
	defer func() {
		if err != nil {
			for i := len(closers) - 1; i >= 0; i-- {
				closers[i]()
			}
		}
	}()

	// The challenge DNS server. pebble's VA asks it over TCP (va.New sets the client so).
	dnsLn, err := net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
	if err != nil {
		return nil, fmt.Errorf("localca: listen DNS: %w", err)
	}
	closers = append(closers, func() { dnsLn.Close() })
	s.dnsAddr = dnsLn.Addr().String()
	dnsStarted := make(chan struct{})
	s.dnsSrv = &dns.Server{
		Listener:          dnsLn,
		Net:               "tcp",
		Handler:           dns.HandlerFunc(s.serveDNS),
		NotifyStartedFunc: func() { close(dnsStarted) },
		ReadTimeout:       5 * time.Second,
		WriteTimeout:      5 * time.Second,
	}

	// pebble, built exactly like its own main does, with an ECDSA chain (fast to make).
	for k, v := range pebbleEnv {
		if err := os.Setenv(k, v); err != nil {
			return nil, fmt.Errorf("localca: setenv %s: %w", k, err)
		}
	}
	plog := log.New(logWriter(logf), "pebble: ", 0)
	store := db.NewMemoryStore()
	authority := ca.New(plog, store, "", "ecdsa", 0, 1, map[string]ca.Profile{
		"default": {Description: "tsproc local tailnet"},
	})
	// Ports 0: pebble would only use them for HTTP-01 and TLS-ALPN-01 validation, which
	// tailnet nodes never ask for; DNS-01 goes to our DNS server only.
	validator := va.New(plog, 0, 0, false, s.dnsAddr, store)
	frontEnd := wfe.New(plog, store, validator, authority, []string{"tsproc.invalid"}, false, false, 0, 0)
	s.rootPEM = authority.GetRootCert(0).PEM()

	acmeLn, err := net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
	if err != nil {
		return nil, fmt.Errorf("localca: listen ACME: %w", err)
	}
	closers = append(closers, func() { acmeLn.Close() })
	cert, certPEM, err := serverCert(addr)
	if err != nil {
		return nil, err
	}
	s.trustPEM = append(append([]byte{}, certPEM...), s.rootPEM...)
	s.dirURL = "https://" + acmeLn.Addr().String() + wfe.DirectoryPath
	s.acmeHTTP = &http.Server{
		Handler:           finalizeLocation(frontEnd.Handler()),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          plog,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}},
	}

	var wg sync.WaitGroup
	wg.Go(func() {
		if err := s.acmeHTTP.ServeTLS(acmeLn, "", ""); !errors.Is(err, http.ErrServerClosed) {
			logf("ACME server stopped: %v", err)
		}
	})
	wg.Go(func() {
		if err := s.dnsSrv.ActivateAndServe(); err != nil {
			logf("DNS server stopped: %v", err)
		}
	})
	go func() { wg.Wait(); close(s.done) }()
	<-dnsStarted // so that Close can always shut it down
	return s, nil
}

// DirectoryURL is the ACME directory (TS_DEBUG_ACME_DIRECTORY_URL for a node).
func (s *Server) DirectoryURL() string { return s.dirURL }

// RootPEM is the certificate of the CA that issues the leaves, in PEM: what a client of a
// node's TLS listener trusts.
func (s *Server) RootPEM() []byte { return s.rootPEM }

// TrustPEM is what an ACME client must trust (its SSL_CERT_FILE): the ACME server's own TLS
// certificate, followed by RootPEM so that the client also accepts the certificates it gets.
func (s *Server) TrustPEM() []byte { return s.trustPEM }

// DNSAddr is the TCP address of the challenge DNS server.
func (s *Server) DNSAddr() string { return s.dnsAddr }

// AddTXT publishes a TXT record. Values are added, never replaced: a node asking for two
// names (or retrying) has several challenges open at once.
func (s *Server) AddTXT(name, value string) {
	name = dns.CanonicalName(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, v := range s.txt[name] {
		if v == value {
			return
		}
	}
	s.txt[name] = append(s.txt[name], value)
}

// Close stops both servers, forcibly once ctx is done, and waits for their goroutines.
func (s *Server) Close(ctx context.Context) {
	if err := s.acmeHTTP.Shutdown(ctx); err != nil {
		s.acmeHTTP.Close()
	}
	if err := s.dnsSrv.ShutdownContext(ctx); err != nil {
		s.dnsSrv.Listener.Close()
	}
	select {
	case <-s.done:
	case <-ctx.Done():
	}
}

// serveDNS answers TXT questions from the published records, everything else with an empty
// answer; it is authoritative for every name, and recursion is never offered.
func (s *Server) serveDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	for _, q := range req.Question {
		if q.Qtype != dns.TypeTXT || q.Qclass != dns.ClassINET {
			continue
		}
		s.mu.Lock()
		values := append([]string(nil), s.txt[dns.CanonicalName(q.Name)]...)
		s.mu.Unlock()
		for _, v := range values {
			m.Answer = append(m.Answer, &dns.TXT{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 1},
				Txt: splitTXT(v),
			})
		}
	}
	_ = w.WriteMsg(m)
}

// splitTXT cuts a value into the 255-octet character-strings one TXT record holds.
func splitTXT(v string) []string {
	var out []string
	for len(v) > 255 {
		out = append(out, v[:255])
		v = v[255:]
	}
	return append(out, v)
}

// finalizeLocation adds the Location header, naming the order, that pebble leaves out of its
// finalize answer (letsencrypt/pebble#508). RFC 8555 §7.4 has it, and golang.org/x/crypto/acme
// (the client in tailscale's ACME code) polls that URL for the certificate (golang/go#77704).
func finalizeLocation(h http.Handler) http.Handler {
	const finalize = "/finalize-order/"
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if id, ok := strings.CutPrefix(r.URL.Path, finalize); ok && id != "" && r.Method == http.MethodPost {
			w.Header().Set("Location", "https://"+r.Host+"/my-order/"+id)
		}
		h.ServeHTTP(w, r)
	})
}

// serverCert makes a fresh self-signed certificate for the ACME server's IP address.
func serverCert(addr netip.Addr) (tls.Certificate, []byte, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("localca: key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("localca: serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "tsproc local ACME server " + addr.String()},
		IPAddresses:           []net.IP{addr.AsSlice()},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true, // it is its own trust anchor in the client's root file
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("localca: certificate: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}, certPEM, nil
}

// logWriter adapts logf to the io.Writer the log package needs.
type logWriter Logf

func (f logWriter) Write(p []byte) (int, error) {
	f("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
