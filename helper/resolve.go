package main

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"

	"tailscale.com/client/local"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/net/tsaddr"
)

// tailnetResolver turns a dial target into a tailnet address using only the node's own view
// of the tailnet (its netmap, through LocalClient.Status).
//
// tsnet's Dial resolves names it does not find in the netmap with the system resolver and
// dials non-tailnet addresses through the host network. For tsproc, dial means "over the
// tailnet": an unknown name must fail at once, without a DNS query leaving the machine, and an
// address that is neither a tailnet IP nor inside a peer's advertised subnet route must not be
// dialled at all.
type tailnetResolver struct {
	mu     sync.Mutex
	names  map[string]netip.Addr // lower-case hostname, short and full MagicDNS names
	routes []netip.Prefix        // subnet routes peers are primary for
}

// resolve returns the address to dial for host, refreshing its view of the tailnet once when
// host is not (yet) known.
func (r *tailnetResolver) resolve(ctx context.Context, lc *local.Client, host string) (netip.Addr, error) {
	if ip, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		ip = ip.Unmap()
		if tsaddr.IsTailscaleIP(ip) {
			return ip, nil
		}
		if r.inRoutes(ip) {
			return ip, nil
		}
		if err := r.refresh(ctx, lc); err != nil {
			return netip.Addr{}, err
		}
		if r.inRoutes(ip) {
			return ip, nil
		}
		return netip.Addr{}, fmt.Errorf("%s is not an address on the tailnet (neither a node's "+
			"Tailscale IP nor inside a subnet route a peer advertises)", ip)
	}
	name := strings.ToLower(strings.TrimSuffix(host, "."))
	if ip, ok := r.lookup(name); ok {
		return ip, nil
	}
	if err := r.refresh(ctx, lc); err != nil {
		return netip.Addr{}, err
	}
	if ip, ok := r.lookup(name); ok {
		return ip, nil
	}
	return netip.Addr{}, fmt.Errorf("no node named %q on the tailnet (names are MagicDNS "+
		"hostnames, short or full; tsproc never asks the system's DNS)", host)
}

func (r *tailnetResolver) lookup(name string) (netip.Addr, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ip, ok := r.names[name]
	return ip, ok
}

func (r *tailnetResolver) inRoutes(ip netip.Addr) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.routes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// refresh rebuilds the name and route tables from the node's current status.
func (r *tailnetResolver) refresh(ctx context.Context, lc *local.Client) error {
	st, err := lc.Status(ctx)
	if err != nil {
		return fmt.Errorf("reading the tailnet's names: %w", err)
	}
	names := make(map[string]netip.Addr)
	var routes []netip.Prefix
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
			routes = append(routes, ps.PrimaryRoutes.AsSlice()...)
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
