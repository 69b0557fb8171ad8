package main

import (
	"context"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/envknob"
	"tailscale.com/health"
	"tailscale.com/ipn"
	"tailscale.com/ipn/store/mem"
	"tailscale.com/logtail"
	"tailscale.com/net/netns"
	"tailscale.com/net/tsaddr"
	"tailscale.com/tailcfg"
	"tailscale.com/tsnet"

	"github.com/tsproc/tsproc/helper/internal/connrecord"
	"github.com/tsproc/tsproc/helper/internal/timewait"
	"github.com/tsproc/tsproc/helper/internal/wire"
)

// Bringing the node up: start (validation and the tsnet server), the IPN bus watch that
// feeds state notifications, and up.

// hostnameRE is a DNS label: letters, digits and hyphens, not starting or ending with one.
var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$`)

// startConfig is a validated start request.
type startConfig struct {
	hostname, stateDir, authKey, controlURL string
	ephemeral, memoryState                  bool
	tags                                    []string
	advertiseRoutes                         []netip.Prefix
	acme                                    acmeConfig // zero unless the tailnet has its own ACME server
	credentials                             credentialStart
	tcpBufferMax                            int  // 0: tsnet's TCP buffer sizes (memory.go)
	releaseCodePages                        bool // memory.go
}

func parseStart(p *wire.ParamReader) (startConfig, error) {
	c := startConfig{
		hostname:    p.String("hostname"),
		stateDir:    p.String("state_dir"),
		authKey:     p.OptString("auth_key"),
		controlURL:  p.OptString("control_url"),
		ephemeral:   p.Bool("ephemeral"),
		tags:        p.Strings("tags"),
		memoryState: p.OptBool("memory_state"),
		acme: acmeConfig{
			directoryURL: p.OptString("acme_directory_url"),
			roots:        p.OptString("acme_roots"),
		},
	}
	c.tcpBufferMax = int(p.OptUint("tcp_buffer_max", minTCPBufferMax, maxTCPBufferMax, 0))
	c.releaseCodePages = p.OptBool("release_code_pages")
	routes := p.Strings("advertise_routes")
	if p.Err != nil {
		return c, p.Err
	}
	var err error
	for _, r := range routes {
		pfx, err := netip.ParsePrefix(r)
		if err != nil || pfx != pfx.Masked() {
			return c, wire.NewError(wire.CodeBadRequest, `"advertise_routes": %q is not a network prefix like 10.0.0.0/24 (address bits beyond the prefix length must be zero)`, r)
		}
		c.advertiseRoutes = append(c.advertiseRoutes, pfx)
	}
	if err := c.acme.check(); err != nil {
		return c, err
	}
	if c.credentials, err = parseCredentialStart(p, c.memoryState); err != nil {
		return c, err
	}
	if c.credentials.advertiseExitNode {
		c.advertiseRoutes = append(c.advertiseRoutes, tsaddr.ExitRoutes()...)
	}
	switch {
	case len(c.hostname) > 63 || !hostnameRE.MatchString(c.hostname):
		return c, wire.NewError(wire.CodeBadRequest, `"hostname" must be 1 to 63 letters, digits or hyphens, not starting or ending with a hyphen`)
	case !filepath.IsAbs(c.stateDir):
		return c, wire.NewError(wire.CodeBadRequest, `"state_dir" must be an absolute path`)
	case c.memoryState && !c.ephemeral:
		return c, wire.NewError(wire.CodeBadRequest, `"memory_state" is only allowed with "ephemeral"`)
	}
	for _, t := range c.tags {
		if err := tailcfg.CheckTag(t); err != nil {
			return c, wire.NewError(wire.CodeBadRequest, `"tags": %q: %v`, t, err)
		}
	}
	if c.controlURL != "" {
		u, err := url.Parse(c.controlURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return c, wire.NewError(wire.CodeBadRequest, `"control_url" must be an http:// or https:// URL`)
		}
	}
	c.stateDir = filepath.Clean(c.stateDir)
	return c, nil
}

func (n *node) start(_ context.Context, p *wire.ParamReader) (*wire.Reply, error) {
	cfg, err := parseStart(p)
	if err != nil {
		return nil, err
	}
	n.startMu.Lock()
	defer n.startMu.Unlock()
	n.mu.Lock()
	closed, started := n.closed, n.srv != nil
	n.mu.Unlock()
	switch {
	case closed:
		return nil, wire.NewError(wire.CodeInternal, "helper is shutting down")
	case started:
		return nil, wire.NewError(wire.CodeAlreadyStarted, "start was already called")
	}

	if err := os.MkdirAll(cfg.stateDir, 0o700); err != nil {
		return nil, wire.NewError(wire.CodeBadRequest, `"state_dir": %v`, err)
	}
	fi, err := os.Stat(cfg.stateDir)
	if err != nil || !fi.IsDir() {
		return nil, wire.NewError(wire.CodeBadRequest, `"state_dir" %q is not a directory`, cfg.stateDir)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		// The node key lives there. An existing directory is the host's to fix, not ours.
		stderrLog.Log("warn", "helper", fmt.Sprintf("state_dir %s has mode %v: others can read the node's key", cfg.stateDir, fi.Mode().Perm()))
	}

	// Never upload logs: the host's logging is the only log sink.
	envknob.SetNoLogsNoSupport()
	logtail.Disable()
	if isLoopbackURL(cfg.controlURL) {
		// A control server on loopback (the local tailnet of `tsproc-helper control`) is
		// unreachable through netns's interface binding; tsnet's own tests turn it off too.
		netns.SetEnabled(false)
	}

	if err := cfg.acme.apply(cfg.stateDir); err != nil {
		return nil, err
	}

	srv := &tsnet.Server{
		Hostname:      cfg.hostname,
		Dir:           cfg.stateDir,
		AuthKey:       cfg.authKey,
		ControlURL:    cfg.controlURL,
		Ephemeral:     cfg.ephemeral,
		AdvertiseTags: cfg.tags,
		UserLogf:      stderrLog.Logf("info", "user"),
		Port:          savedUDPPort(cfg.stateDir), // udpport.go
	}
	if n.tsnetLogs {
		srv.Logf = stderrLog.Logf("debug", "tsnet")
	}
	if cfg.memoryState {
		srv.Store = new(mem.Store)
	}
	hostStore := cfg.credentials.apply(srv, n.host)
	if err := srv.Start(); err != nil {
		// tsnet cleans up after a failed Start; a new start may try again.
		return nil, startFailed(err, cfg.credentials, hostStore)
	}
	if cfg.tcpBufferMax != 0 {
		if err := capTCPBuffers(srv, cfg.tcpBufferMax); err != nil {
			srv.Close()
			return nil, wire.NewError(wire.CodeInternal, "%v", err)
		}
	}
	lc, err := srv.LocalClient()
	if err != nil {
		srv.Close()
		return nil, wire.NewError(wire.CodeInternal, "tsnet local client: %v", err)
	}
	saveUDPPort(srv, cfg.stateDir)
	// Before the node is up, so that no connection ever meets netstack's 60 s TIME_WAIT.
	if err := timewait.ShortenTimeWait(srv); err != nil {
		stderrLog.Log("warn", "helper", fmt.Sprintf("a new connection on a recently used 4-tuple may stall: %v", err))
	}
	// Before the node is up: no peer can open a flow yet while netstack's hook changes.
	if n.record != nil {
		if err := connrecord.Watch(srv, n.record); err != nil {
			stderrLog.Log("warn", "helper", fmt.Sprintf("connections not yet handed over will not be reset after a crash: %v", err))
		}
	}
	// Accept peers' subnet routes (dial reaches addresses inside them), and advertise ours.
	prefsCtx, cancelPrefs := context.WithTimeout(context.Background(), localCallTimeout)
	_, err = lc.EditPrefs(prefsCtx, &ipn.MaskedPrefs{
		Prefs:              ipn.Prefs{RouteAll: true, AdvertiseRoutes: cfg.advertiseRoutes},
		RouteAllSet:        true,
		AdvertiseRoutesSet: true,
	})
	cancelPrefs()
	if err != nil {
		srv.Close()
		return nil, wire.NewError(wire.CodeInternal, "setting the node's routes: %v", err)
	}
	watchCtx, cancel := context.WithCancel(context.Background())
	n.mu.Lock()
	n.srv, n.lc, n.watchCancel = srv, lc, cancel
	n.localNoACME = isLoopbackURL(cfg.controlURL) && cfg.acme.directoryURL == ""
	n.withAuthKey = cfg.authKey != ""
	n.releaseCodePages = cfg.releaseCodePages
	n.mu.Unlock()
	helperLogf("tsnet started: hostname %q, state in %s, ephemeral %v, memory state %v",
		cfg.hostname, cfg.stateDir, cfg.ephemeral, cfg.memoryState)
	return &wire.Reply{Result: map[string]any{}, FD: -1, After: func(bool) {
		// Watch the bus only after start is answered, so no state notification comes
		// before the answer that makes it meaningful.
		n.goOwned(func() { n.watchBus(watchCtx, lc) })
	}}, nil
}

func isLoopbackURL(s string) bool {
	u, err := url.Parse(s)
	if err != nil || s == "" {
		return false
	}
	host := u.Hostname()
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// watchBus follows the IPN bus, keeps the state, auth URL and last error that up and status
// need, and sends a state notification whenever the state, the auth URL or the health
// warnings change — the health as soon as tsnet reports it, so that a host sees "connection
// refused" from a wrong control URL at once, not at the end of up's timeout.
func (n *node) watchBus(ctx context.Context, lc *local.Client) {
	w, err := lc.WatchIPNBus(ctx, ipn.NotifyInitialState|ipn.NotifyInitialHealthState)
	if err != nil {
		if ctx.Err() == nil {
			helperLogf("watching the IPN bus: %v", err)
		}
		return
	}
	defer w.Close()
	for {
		nt, err := w.Next()
		if err != nil {
			return
		}
		n.mu.Lock()
		changed := false
		if nt.ErrMessage != nil {
			n.lastErr = *nt.ErrMessage
		}
		if nt.BrowseToURL != nil && *nt.BrowseToURL != n.authURL {
			n.authURL = *nt.BrowseToURL
			changed = true
		}
		if nt.Health != nil {
			if h := healthTexts(nt.Health); !slices.Equal(h, n.healthTexts) {
				n.healthTexts = h
				changed = true
			}
		}
		if nt.State != nil && nt.State.String() != n.state {
			n.state = nt.State.String()
			if *nt.State == ipn.Running {
				n.authURL, n.lastErr = "", ""
			}
			changed = true
		}
		params := map[string]any{"state": n.state}
		if n.healthTexts != nil {
			params["health"] = n.healthTexts
		}
		if n.authURL != "" {
			params["auth_url"] = n.authURL
		}
		n.mu.Unlock()
		if changed {
			if err := wire.Notify(n.out, "state", params, -1); err != nil {
				return
			}
		}
	}
}

// healthTexts is a health state as the sorted warning texts (the strings status's health
// lists), never nil.
func healthTexts(st *health.State) []string {
	out := []string{}
	for _, w := range st.Warnings {
		text := w.Text
		if text == "" {
			text = w.Title
		}
		out = append(out, text)
	}
	slices.Sort(out)
	return out
}

func (n *node) up(ctx context.Context, p *wire.ParamReader) (*wire.Reply, error) {
	timeoutMS := readTimeout(p)
	if p.Err != nil {
		return nil, p.Err
	}
	srv, lc, err := n.requireStarted()
	if err != nil {
		return nil, err
	}
	upCtx, cancel := callContext(ctx, timeoutMS)
	defer cancel()
	st, err := srv.Up(upCtx)
	if err == nil {
		// Running is not yet reachable through DERP: see derpHome.
		region, waited, ok := awaitDERPHome(upCtx, srv, lc)
		if ok {
			debugLogf("home DERP region %q registered this node %v after it was running", region, waited.Round(time.Microsecond))
		} else {
			helperLogf("home DERP region %q has not registered this node %v after it was running; "+
				"until it does, peers reach it on direct paths only, and a peer's first dial may wait "+
				"5 s for WireGuard's retry", region, waited.Round(time.Millisecond))
		}
		n.afterUp()
		return wire.OKReply(n.statusResult(st)), nil
	}
	switch {
	case ctx.Err() != nil:
		return nil, wire.NewError(wire.CodeInternal, "up cancelled: the helper is shutting down")
	case upCtx.Err() != nil:
		return nil, n.upTimeout(lc, timeoutMS)
	case isAuthError(err):
		return nil, n.loginRefused(err.Error(), "")
	}
	return nil, wire.NewError(wire.CodeInternal, "up: %v", err)
}

// loginRefused is the auth_failed error for the control server's refusal (reason). Control
// servers say the same ("invalid authkey") whether the key is wrong or there is none: the
// node knows which.
func (n *node) loginRefused(reason, health string) error {
	n.mu.Lock()
	withKey := n.withAuthKey
	n.mu.Unlock()
	if withKey {
		return wire.NewError(wire.CodeAuthFailed, "control server refused the auth key (wrong, expired, "+
			"revoked or already used): %s%s", reason, health)
	}
	return wire.NewError(wire.CodeAuthFailed, "control server refused the login: it wants an auth key "+
		"and none was given (Node(auth_key=...); the CLI reads TS_AUTHKEY): %s%s", reason, health)
}

// upTimeout explains why up did not reach Running in time.
func (n *node) upTimeout(lc *local.Client, timeoutMS uint64) error {
	ctx, cancel := context.WithTimeout(context.Background(), localCallTimeout)
	defer cancel()
	st, err := lc.StatusWithoutPeers(ctx)
	n.mu.Lock()
	lastErr, authURL := n.lastErr, n.authURL
	n.mu.Unlock()
	if err != nil {
		return wire.NewError(wire.CodeTimeout, "node not running after %d ms (status unavailable: %v)", timeoutMS, err)
	}
	if authURL == "" {
		authURL = st.AuthURL
	}
	health := healthSuffix(st.Health)
	switch {
	case lastErr != "":
		// The control server refused the login before up was called, or between tsnet's
		// retries: the bus carried the reason and Up never saw it.
		return n.loginRefused(lastErr, health)
	case st.BackendState == ipn.NeedsLogin.String() && authURL != "":
		return wire.NewError(wire.CodeNeedsLogin, "node needs an interactive login: visit %s", authURL)
	case st.BackendState == ipn.NeedsLogin.String():
		// Logging in, but no URL to visit: control has not answered (yet), or the key is
		// still being checked. Only time tells; the health usually says more.
		return wire.NewError(wire.CodeTimeout, "node not running after %d ms: still logging in, no answer from the control server%s", timeoutMS, health)
	case st.BackendState == ipn.NeedsMachineAuth.String():
		return wire.NewError(wire.CodeTimeout, "node not running after %d ms: waiting for an admin to approve the machine%s", timeoutMS, health)
	}
	return wire.NewError(wire.CodeTimeout, "node not running after %d ms (state %s)%s", timeoutMS, st.BackendState, health)
}

func healthSuffix(health []string) string {
	if len(health) == 0 {
		return "; health: no warnings"
	}
	return "; health: " + strings.Join(health, "; ")
}
