package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"

	"tailscale.com/client/local"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tsnet"

	"github.com/tsproc/tsproc/helper/internal/timewait"
)

// tailnetResolver turns a dial target into a tailnet address using only the node's own view
// of the tailnet (its netmap, through LocalClient.Status), and decides whether that address is
// on the tailnet at all.
//
// tsnet's Dial resolves names it does not find in the netmap with the system resolver, and
// dials every address its netmap does not route — including a Tailscale IP that no node holds —
// through the host network. For tsproc, dial means "over the tailnet": an unknown name must fail
// at once, without a DNS query leaving the machine, and an address that no node in the netmap
// holds and no peer's route contains must not be dialled at all (dialTailnet, below, is the only
// dialler dial, dial_udp and ping_peer use).
type tailnetResolver struct {
	mu     sync.Mutex
	names  map[string]netip.Addr // lower-case hostname, short and full MagicDNS names
	routes []peerRoute           // subnet routes peers are primary for, for error messages
}

// peerRoute is a subnet route a peer advertises and is primary for.
type peerRoute struct {
	prefix netip.Prefix
	peer   string
}

// resolve returns the tailnet address to dial for host: a MagicDNS name from the netmap, or an
// IP the netmap routes over the tailnet (onTailnet). It refreshes its view of the tailnet once
// when host is not (yet) known.
func (r *tailnetResolver) resolve(ctx context.Context, srv *tsnet.Server, lc *local.Client, host string) (netip.Addr, error) {
	if ip, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		ip = ip.Unmap()
		if onTailnet(srv, ip) {
			return ip, nil
		}
		if err := r.refresh(ctx, lc); err != nil {
			return netip.Addr{}, err
		}
		if rt, ok := r.routeFor(ip); ok {
			return netip.Addr{}, offTailnet("%s is inside %s, a subnet route of %s that this "+
				"node does not use", ip, rt.prefix, rt.peer)
		}
		return netip.Addr{}, offTailnet("%s is not an address on the tailnet: no node in the "+
			"netmap holds it and no peer's subnet route contains it (tsproc never dials "+
			"beyond the tailnet)", ip)
	}
	name := strings.ToLower(strings.TrimSuffix(host, "."))
	ip, ok := r.lookup(name)
	if !ok || !onTailnet(srv, ip) {
		// Unknown, or known from an older netmap: the current one has the answer.
		if err := r.refresh(ctx, lc); err != nil {
			return netip.Addr{}, err
		}
		ip, ok = r.lookup(name)
	}
	if !ok {
		// A Tailscale Service's name ("svc:web", "web.<tailnet domain>"): a DNS record.
		if svcIP, found, err := lookupServiceName(ctx, lc, name); err == nil && found {
			ip, ok = svcIP, true
		}
	}
	if !ok {
		return netip.Addr{}, unknownHost("no node named %q on the tailnet (names are MagicDNS "+
			"hostnames, short or full; tsproc never asks the system's DNS)", host)
	}
	if !onTailnet(srv, ip) {
		return netip.Addr{}, unknownHost("%q (%s) is no longer on the tailnet", host, ip)
	}
	return ip, nil
}

// onTailnet reports whether the node's current netmap sends ip over the tailnet: the address of
// a node (this one or a peer), or an address inside a route of a peer this node uses. It asks
// the very table tsnet's dialler and netstack ask (LocalBackend.PeerForIP, through the dialler's
// UseNetstackForIP), so what it lets through is exactly what netstack carries over WireGuard.
func onTailnet(srv *tsnet.Server, ip netip.Addr) bool {
	d, ok := srv.Sys().Dialer.GetOK()
	return ok && d.UseNetstackForIP != nil && d.UseNetstackForIP(ip)
}

// errNotOnTailnet is dialTailnet's answer for an address the netmap does not (or no longer)
// route over the tailnet.
var errNotOnTailnet = errors.New("not an address on the tailnet")

// dialTailnet dials dst through the node's netstack only, never through the host network: where
// tsnet's Dial falls back to the system's dialler for an address its netmap does not route,
// this refuses. A peer that leaves between resolve and this call is refused here too.
func dialTailnet(ctx context.Context, srv *tsnet.Server, network string, dst netip.AddrPort) (net.Conn, error) {
	d, ok := srv.Sys().Dialer.GetOK()
	if !ok || d.UseNetstackForIP == nil || !d.UseNetstackForIP(dst.Addr()) {
		return nil, fmt.Errorf("%s: %w", dst.Addr(), errNotOnTailnet)
	}
	switch network {
	case "tcp":
		// tsnet's NetstackDialTCP, but from the next port in sequence rather than a random
		// one, so that no dial reuses a 4-tuple this node just closed (see package timewait).
		return timewait.DialTCP(ctx, srv, dst)
	case "udp":
		return d.NetstackDialUDP(ctx, dst)
	}
	return nil, fmt.Errorf("network %q: only tcp and udp", network)
}

// resolveRefusal is resolve's answer for a target it will not dial: an address off the
// tailnet, or a name no node has. The SOCKS5 proxy answers the two with different reply codes.
type resolveRefusal struct {
	msg         string
	offTailnet  bool // an IP the netmap does not route over the tailnet
	unknownHost bool // a name no node has (now)
}

func (e *resolveRefusal) Error() string { return e.msg }

func offTailnet(format string, args ...any) error {
	return &resolveRefusal{msg: fmt.Sprintf(format, args...), offTailnet: true}
}

func unknownHost(format string, args ...any) error {
	return &resolveRefusal{msg: fmt.Sprintf(format, args...), unknownHost: true}
}

func (r *tailnetResolver) lookup(name string) (netip.Addr, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ip, ok := r.names[name]
	return ip, ok
}

func (r *tailnetResolver) routeFor(ip netip.Addr) (peerRoute, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rt := range r.routes {
		if rt.prefix.Contains(ip) {
			return rt, true
		}
	}
	return peerRoute{}, false
}

// refresh rebuilds the name and route tables from the node's current status.
func (r *tailnetResolver) refresh(ctx context.Context, lc *local.Client) error {
	st, err := lc.Status(ctx)
	if err != nil {
		return fmt.Errorf("reading the tailnet's names: %w", err)
	}
	names := make(map[string]netip.Addr)
	var routes []peerRoute
	add := func(ps *ipnstate.PeerStatus) {
		if ps == nil || len(ps.TailscaleIPs) == 0 {
			return
		}
		ip := ps.TailscaleIPs[0]
		for _, a := range ps.TailscaleIPs {
			if a.Is4() { // IPv4 first: what users expect to see, and what every peer has
				ip = a
				break
			}
		}
		full := strings.ToLower(strings.TrimSuffix(ps.DNSName, "."))
		for _, n := range []string{strings.ToLower(ps.HostName), full, strings.SplitN(full, ".", 2)[0]} {
			if n == "" {
				continue
			}
			if _, taken := names[n]; !taken {
				names[n] = ip
			}
		}
		if ps.PrimaryRoutes != nil {
			for _, p := range ps.PrimaryRoutes.All() {
				routes = append(routes, peerRoute{prefix: p, peer: ps.HostName})
			}
		}
	}
	// Self first, so that a peer that asked for the same hostname cannot shadow this node.
	add(st.Self)
	for _, ps := range st.Peer {
		// The full DNS name is unique; a short name shared by two nodes resolves to whichever
		// came first, as MagicDNS itself does not promise more.
		add(ps)
	}
	r.mu.Lock()
	r.names, r.routes = names, routes
	r.mu.Unlock()
	return nil
}
