package localca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/crypto/acme"
)

func startCA(t *testing.T) *Server {
	t.Helper()
	s, err := Start(netip.MustParseAddr("127.0.0.1"), t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s.Close(ctx)
	})
	return s
}

// TestDNS01 gets a certificate by DNS-01, the way tailscale's ACME code does, with the same
// client library (golang.org/x/crypto/acme), and checks it chains to RootPEM.
func TestDNS01(t *testing.T) {
	s := startCA(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	trust := x509.NewCertPool()
	if !trust.AppendCertsFromPEM(s.TrustPEM()) {
		t.Fatal("TrustPEM has no certificates")
	}
	accountKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	client := &acme.Client{
		Key:          accountKey,
		DirectoryURL: s.DirectoryURL(),
		HTTPClient: &http.Client{Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: trust},
		}},
	}
	if _, err := client.Register(ctx, &acme.Account{}, acme.AcceptTOS); err != nil {
		t.Fatalf("Register: %v", err)
	}
	const domain = "web.tailnet.test"
	order, err := client.AuthorizeOrder(ctx, acme.DomainIDs(domain))
	if err != nil {
		t.Fatalf("AuthorizeOrder: %v", err)
	}
	for _, u := range order.AuthzURLs {
		az, err := client.GetAuthorization(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		var chal *acme.Challenge
		for _, c := range az.Challenges {
			if c.Type == "dns-01" {
				chal = c
			}
		}
		if chal == nil {
			t.Fatal("no dns-01 challenge offered")
		}
		rec, err := client.DNS01ChallengeRecord(chal.Token)
		if err != nil {
			t.Fatal(err)
		}
		s.AddTXT("_acme-challenge."+domain, "an older value stays") // append, not replace
		s.AddTXT("_acme-challenge."+domain, rec)
		if _, err := client.Accept(ctx, chal); err != nil {
			t.Fatalf("Accept: %v", err)
		}
		if _, err := client.WaitAuthorization(ctx, az.URI); err != nil {
			t.Fatalf("WaitAuthorization: %v", err)
		}
	}
	if _, err := client.WaitOrder(ctx, order.URI); err != nil {
		t.Fatalf("WaitOrder: %v", err)
	}
	certKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{domain}}, certKey)
	if err != nil {
		t.Fatal(err)
	}
	// With bundle=true, as tailscale calls it; this needs the finalize Location header.
	der, _, err := client.CreateOrderCert(ctx, order.FinalizeURL, csr, true)
	if err != nil {
		t.Fatalf("CreateOrderCert: %v", err)
	}
	leaf, err := x509.ParseCertificate(der[0])
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(s.RootPEM())
	inter := x509.NewCertPool()
	for _, d := range der[1:] {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			t.Fatal(err)
		}
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: domain, Roots: roots, Intermediates: inter}); err != nil {
		t.Fatalf("leaf does not verify against RootPEM: %v", err)
	}
}

func TestDNSAnswers(t *testing.T) {
	s := startCA(t)
	s.AddTXT("_acme-challenge.A.tailnet.test", "one")
	s.AddTXT("_acme-challenge.a.tailnet.test.", "two")
	s.AddTXT("_acme-challenge.a.tailnet.test", "two") // duplicate: kept once
	c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
	ask := func(name string, qtype uint16) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), qtype)
		in, _, err := c.Exchange(m, s.DNSAddr())
		if err != nil {
			t.Fatal(err)
		}
		return in
	}
	in := ask("_acme-challenge.a.tailnet.test", dns.TypeTXT)
	var got []string
	for _, rr := range in.Answer {
		got = append(got, rr.(*dns.TXT).Txt...)
	}
	if len(got) != 2 || got[0] != "one" || got[1] != "two" {
		t.Errorf("TXT answer = %q, want [one two]", got)
	}
	if in := ask("_acme-challenge.a.tailnet.test", dns.TypeA); in.Rcode != dns.RcodeSuccess || len(in.Answer) != 0 {
		t.Errorf("A question: rcode %d, %d answers; want an empty success", in.Rcode, len(in.Answer))
	}
	if in := ask("other.test", dns.TypeTXT); len(in.Answer) != 0 {
		t.Errorf("unknown name: %d answers", len(in.Answer))
	}
}

func TestRefusesNonLoopback(t *testing.T) {
	if _, err := Start(netip.MustParseAddr("192.0.2.1"), t.Logf); err == nil {
		t.Fatal("Start on a non-loopback address succeeded")
	}
}
