package main

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/tsproc/tsproc/helper/internal/wire"
)

// acmeConfig points the node's certificate requests at a tailnet's own ACME server (the
// local tailnet's in --https mode) instead of Let's Encrypt. The host passes it in start, so
// that nobody has to export tsnet's debug knobs.
type acmeConfig struct {
	directoryURL string // https URL of the ACME directory
	roots        string // PEM certificates to trust for it (and for the certificates it issues)
}

func (a acmeConfig) check() error {
	if a.directoryURL == "" {
		if a.roots != "" {
			return wire.NewError(wire.CodeBadRequest, `"acme_roots" needs "acme_directory_url"`)
		}
		return nil
	}
	u, err := url.Parse(a.directoryURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return wire.NewError(wire.CodeBadRequest, `"acme_directory_url" must be an https:// URL`)
	}
	if a.roots != "" && !x509.NewCertPool().AppendCertsFromPEM([]byte(a.roots)) {
		return wire.NewError(wire.CodeBadRequest, `"acme_roots" holds no PEM certificate`)
	}
	return nil
}

// certCacheMark names the ACME server the certificates in <state_dir>/certs came from.
const certCacheMark = ".tsproc-acme-server"

// apply sets the process up for a: tsnet reads the directory from TS_DEBUG_ACME_DIRECTORY_URL
// at each request, and Go's TLS stack reads its roots from SSL_CERT_FILE once, at first use
// (no TLS connection is made before start). Certificates cached from another ACME server
// (an earlier local tailnet, whose CA is gone) are removed: tsnet would serve them, since it
// accepts a cached certificate of an unknown CA from a non-default ACME server.
func (a acmeConfig) apply(stateDir string) error {
	if a.directoryURL == "" {
		return nil
	}
	sum := sha256.Sum256([]byte(a.directoryURL + "\n" + a.roots))
	mark := hex.EncodeToString(sum[:])
	certDir := filepath.Join(stateDir, "certs")
	if old, err := os.ReadFile(filepath.Join(certDir, certCacheMark)); err != nil || strings.TrimSpace(string(old)) != mark {
		if err := os.RemoveAll(certDir); err != nil {
			return wire.NewError(wire.CodeInternal, "removing certificates of another ACME server: %v", err)
		}
	}
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return wire.NewError(wire.CodeBadRequest, `"state_dir": %v`, err)
	}
	if err := os.WriteFile(filepath.Join(certDir, certCacheMark), []byte(mark+"\n"), 0o600); err != nil {
		return wire.NewError(wire.CodeBadRequest, `"state_dir": %v`, err)
	}
	if a.roots != "" {
		rootsFile := filepath.Join(stateDir, "acme-roots.pem")
		if err := os.WriteFile(rootsFile, []byte(a.roots), 0o600); err != nil {
			return wire.NewError(wire.CodeBadRequest, `"state_dir": %v`, err)
		}
		os.Setenv("SSL_CERT_FILE", rootsFile)
		os.Unsetenv("SSL_CERT_DIR") // it would add the host's roots
	}
	os.Setenv("TS_DEBUG_ACME_DIRECTORY_URL", a.directoryURL)
	return nil
}
