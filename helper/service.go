package main

import (
	"context"
	"crypto/tls"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/ipn"
	"tailscale.com/net/tsaddr"
	"tailscale.com/tailcfg"
	"tailscale.com/tsnet"

	"github.com/tsproc/tsproc/helper/internal/wire"
)

// listen_service (docs/protocol.md §4): this node hosts a Tailscale Service (svc:name) on a
// port, as tsnet's ListenService does — it advertises the service (prefs AdvertiseServices)
// and puts a TCP handler for the service's port in the serve config, so that netstack takes
// the connections to the service's virtual IPs — but it does not forward them to a loopback
// listener as tsnet does (this helper opens no listening socket at all, see nolisten_linux.go):
// the serve config's handler is left empty, so netstack hands each connection to tsnet's
// fallback TCP handlers, where a fallbackListener for the service takes it.

// serviceVIPRefresh bounds how often a service listener re-reads the node's service VIPs.
const serviceVIPRefresh = time.Second

// serviceSet is what the node hosts: how many listeners advertise each service, and the
// listeners by port.
type serviceSet struct {
	// mu guards ads and serialises the read-modify-write of prefs and serve config. It is
	// held while registering a fallback handler (tsnet's lock inside it), so the handler
	// itself (takes) must never wait for it: listeners has a lock of its own.
	mu  sync.Mutex
	ads map[tailcfg.ServiceName]int

	lmu       sync.Mutex
	listeners map[uint16][]*serviceListener

	vipMu      sync.Mutex
	vips       map[netip.Addr]tailcfg.ServiceName // from the service-host capability
	vipsReadAt time.Time
}

// serviceListener is a fallbackListener that takes the connections to one service's port.
type serviceListener struct {
	*fallbackListener
	name    tailcfg.ServiceName
	port    uint16
	addr    serviceAddr
	tls     *tls.Config // nil: connections are passed as they come
	release func()      // withdraws the handler and the advertisement
	once    sync.Once
}

type serviceAddr string

func (serviceAddr) Network() string  { return "tcp" }
func (a serviceAddr) String() string { return string(a) }

func (l *serviceListener) Addr() net.Addr { return l.addr }

func (l *serviceListener) Accept() (net.Conn, error) {
	c, err := l.fallbackListener.Accept()
	if err != nil || l.tls == nil {
		return c, err
	}
	return tls.Server(c, l.tls), nil
}

func (l *serviceListener) Close() error {
	err := l.fallbackListener.Close()
	l.once.Do(l.release)
	return err
}

func (n *node) listenService(ctx context.Context, p *wire.ParamReader) (*wire.Reply, error) {
	timeoutMS := readTimeout(p) // first: the error a call without it gets names it
	name := tailcfg.ServiceName(p.String("service"))
	port := uint16(p.Uint("port", 1, 65535))
	terminateTLS := p.OptBool("terminate_tls")
	backlog := p.OptUint("backlog", 1, maxBacklog, defaultBacklog)
	if p.Err != nil {
		return nil, p.Err
	}
	if err := name.Validate(); err != nil {
		return nil, wire.NewError(wire.CodeBadRequest, `"service": %v (a service is named like "svc:web")`, err)
	}
	srv, lc, err := n.requireRunning()
	if err != nil {
		return nil, err
	}
	if err := n.checkListenerRoom(); err != nil {
		return nil, err
	}
	sctx, cancel := callContext(ctx, timeoutMS)
	defer cancel()
	what := "hosting " + string(name)
	st, err := lc.StatusWithoutPeers(sctx)
	if err != nil {
		return nil, n.callError(ctx, sctx, what, timeoutMS,
			wire.NewError(wire.CodeInternal, "reading the node's status: %v", err))
	}
	if st.Self == nil || st.Self.Tags == nil || st.Self.Tags.Len() == 0 {
		return nil, wire.NewError(wire.CodeUntaggedServiceHost, "%v: give the node tags (Node(tags=...))", tsnet.ErrUntaggedServiceHost)
	}
	var tlsConfig *tls.Config
	if terminateTLS {
		if _, err := requireCerts(sctx, n); err != nil {
			return nil, n.callError(ctx, sctx, what, timeoutMS, err)
		}
		tlsConfig = &tls.Config{GetCertificate: lc.GetCertificate}
	}
	suffix := ""
	if st.CurrentTailnet != nil {
		suffix = st.CurrentTailnet.MagicDNSSuffix
	}
	s := &n.services
	s.mu.Lock()
	if err := s.host(sctx, n, name, port); err != nil {
		s.mu.Unlock()
		return nil, n.callError(ctx, sctx, what, timeoutMS, err)
	}
	sl := &serviceListener{
		name: name,
		port: port,
		addr: serviceAddr(name.WithoutPrefix() + "." + suffix + ":" + strconv.Itoa(int(port))),
		tls:  tlsConfig,
	}
	sl.fallbackListener = newFallbackListener(srv, int(backlog), func(dst netip.AddrPort) bool {
		return s.takes(srv, lc, sl, dst)
	})
	sl.release = func() { s.unhost(n, sl) }
	s.lmu.Lock()
	if s.listeners == nil {
		s.listeners = map[uint16][]*serviceListener{}
	}
	s.listeners[port] = append(s.listeners[port], sl)
	s.lmu.Unlock()
	s.mu.Unlock()
	return n.openListener(sl, int(backlog)) // closes sl on error, which unhosts it
}

// host advertises name and adds its port's (empty) TCP handler to the serve config. s.mu held.
func (s *serviceSet) host(ctx context.Context, n *node, name tailcfg.ServiceName, port uint16) error {
	_, lc, err := n.requireStarted()
	if err != nil {
		return err
	}
	sc, err := lc.GetServeConfig(ctx)
	if err != nil {
		return wire.NewError(wire.CodeInternal, "reading the serve config: %v", err)
	}
	if sc == nil {
		sc = new(ipn.ServeConfig)
	}
	if svc := sc.Services[name]; svc != nil && svc.TCP[port] != nil {
		return wire.NewError(wire.CodeAddressInUse, "%s already has a listener on port %d", name, port)
	}
	if sc.Services == nil {
		sc.Services = map[tailcfg.ServiceName]*ipn.ServiceConfig{}
	}
	if sc.Services[name] == nil {
		sc.Services[name] = new(ipn.ServiceConfig)
	}
	if sc.Services[name].TCP == nil {
		sc.Services[name].TCP = map[uint16]*ipn.TCPPortHandler{}
	}
	// No TCPForward, no TerminateTLS: netstack intercepts the port, finds no handler of the
	// serve config's own, and asks tsnet's fallback handlers (see the file comment).
	sc.Services[name].TCP[port] = &ipn.TCPPortHandler{}
	if err := lc.SetServeConfig(ctx, sc); err != nil {
		return wire.NewError(wire.CodeInternal, "setting the serve config: %v", err)
	}
	if s.ads[name] == 0 {
		if err := editAdvertised(ctx, n, name, true); err != nil {
			// Not advertised: take the handler out again rather than leave it half-hosted.
			delete(sc.Services[name].TCP, port)
			if len(sc.Services[name].TCP) == 0 {
				delete(sc.Services, name)
			}
			sc.ETag = ""
			if cur, gerr := lc.GetServeConfig(ctx); gerr == nil && cur != nil {
				sc.ETag = cur.ETag
			}
			if rerr := lc.SetServeConfig(ctx, sc); rerr != nil {
				helperLogf("removing %s port %d from the serve config: %v", name, port, rerr)
			}
			return err
		}
	}
	if s.ads == nil {
		s.ads = map[tailcfg.ServiceName]int{}
	}
	s.ads[name]++
	return nil
}

// unhost undoes host for a closed listener: the handler goes, and the advertisement when it
// was the service's last listener.
func (s *serviceSet) unhost(n *node, sl *serviceListener) {
	s.lmu.Lock()
	s.listeners[sl.port] = slices.DeleteFunc(s.listeners[sl.port], func(l *serviceListener) bool { return l == sl })
	s.lmu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ads[sl.name]--
	_, lc, err := n.requireStarted()
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), localCallTimeout)
	defer cancel()
	if s.ads[sl.name] <= 0 {
		delete(s.ads, sl.name)
		if err := editAdvertised(ctx, n, sl.name, false); err != nil {
			helperLogf("withdrawing %s: %v", sl.name, err)
		}
	}
	sc, err := lc.GetServeConfig(ctx)
	if err == nil && sc != nil && sc.Services[sl.name] != nil {
		delete(sc.Services[sl.name].TCP, sl.port)
		if len(sc.Services[sl.name].TCP) == 0 {
			delete(sc.Services, sl.name)
		}
		err = lc.SetServeConfig(ctx, sc)
	}
	if err != nil {
		helperLogf("removing %s port %d from the serve config: %v", sl.name, sl.port, err)
	}
}

// editAdvertised adds name to, or removes it from, the services the node advertises.
func editAdvertised(ctx context.Context, n *node, name tailcfg.ServiceName, add bool) error {
	_, lc, err := n.requireStarted()
	if err != nil {
		return err
	}
	prefs, err := lc.GetPrefs(ctx)
	if err != nil {
		return wire.NewError(wire.CodeInternal, "reading prefs: %v", err)
	}
	list := slices.DeleteFunc(slices.Clone(prefs.AdvertiseServices), func(s string) bool { return s == name.String() })
	if add {
		list = append(list, name.String())
	}
	_, err = lc.EditPrefs(ctx, &ipn.MaskedPrefs{
		AdvertiseServicesSet: true,
		Prefs:                ipn.Prefs{AdvertiseServices: list},
	})
	if err != nil {
		return wire.NewError(wire.CodeInternal, "advertising %s: %v", name, err)
	}
	return nil
}

// takes reports whether a connection to dst is for sl: to its port, at a service VIP (a
// Tailscale address that is not this node's own). With one service listener on the port
// that is enough — netstack intercepts only the ports of services this node hosts; with
// several, the VIP must be sl's, from the node's service-host capability.
// It runs inside tsnet's fallback handler and must be quick.
func (s *serviceSet) takes(srv *tsnet.Server, lc *local.Client, sl *serviceListener, dst netip.AddrPort) bool {
	if dst.Port() != sl.port || !tsaddr.IsTailscaleIP(dst.Addr()) {
		return false
	}
	if ip4, ip6 := srv.TailscaleIPs(); dst.Addr() == ip4 || dst.Addr() == ip6 {
		return false
	}
	s.lmu.Lock()
	alone := len(s.listeners[sl.port]) <= 1
	s.lmu.Unlock()
	if alone {
		return true
	}
	return s.vipOwner(lc, dst.Addr()) == sl.name
}

// vipOwner is the service whose VIP ip is, from the node's service-host capability (re-read
// at most once a second, when ip is unknown).
func (s *serviceSet) vipOwner(lc *local.Client, ip netip.Addr) tailcfg.ServiceName {
	s.vipMu.Lock()
	defer s.vipMu.Unlock()
	if name, ok := s.vips[ip]; ok || time.Since(s.vipsReadAt) < serviceVIPRefresh {
		return name
	}
	s.vipsReadAt = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), localCallTimeout)
	defer cancel()
	st, err := lc.StatusWithoutPeers(ctx)
	if err != nil || st.Self == nil {
		helperLogf("reading the service VIPs: %v", err)
		return ""
	}
	mappings, err := tailcfg.UnmarshalNodeCapJSON[tailcfg.ServiceIPMappings](st.Self.CapMap, tailcfg.NodeAttrServiceHost)
	if err != nil {
		helperLogf("reading the service VIPs: %v", err)
		return ""
	}
	s.vips = map[netip.Addr]tailcfg.ServiceName{}
	for _, m := range mappings {
		for name, addrs := range m {
			for _, a := range addrs {
				s.vips[a] = name
			}
		}
	}
	return s.vips[ip]
}
