package main

import (
	"cmp"
	"context"
	"errors"
	"net/netip"
	"runtime"
	"slices"

	"tailscale.com/client/local"
	"tailscale.com/client/tailscale/apitype"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/net/tsaddr"
	"tailscale.com/types/views"

	"github.com/tsproc/tsproc/helper/internal/wire"
)

// What the node knows: status, whois and logout, and the mapping of tsnet's status and
// WhoIs answers to the result maps of docs/protocol.md §4.
// Lists are never nil, so the host always sees a list, never nil.

// health returns the node's health warnings as a message suffix.
func (n *node) health() string {
	_, lc := n.server()
	if lc == nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), localCallTimeout)
	defer cancel()
	st, err := lc.StatusWithoutPeers(ctx)
	if err != nil {
		return "; health: unavailable (" + err.Error() + ")"
	}
	return healthSuffix(st.Health)
}

func (n *node) status(ctx context.Context, p *wire.ParamReader) (*wire.Reply, error) {
	timeoutMS := readTimeout(p)
	if p.Err != nil {
		return nil, p.Err
	}
	_, lc, err := n.requireStarted()
	if err != nil {
		return nil, err
	}
	callCtx, cancel := callContext(ctx, timeoutMS)
	defer cancel()
	st, err := lc.Status(callCtx)
	if err != nil {
		return nil, n.callError(ctx, callCtx, "status", timeoutMS, wire.NewError(wire.CodeInternal, "status: %v", err))
	}
	return wire.OKReply(n.statusResult(st)), nil
}

func (n *node) whois(ctx context.Context, p *wire.ParamReader) (*wire.Reply, error) {
	timeoutMS := readTimeout(p)
	addr := p.String("addr")
	if p.Err != nil {
		return nil, p.Err
	}
	if _, err := netip.ParseAddr(addr); err != nil {
		if _, err := netip.ParseAddrPort(addr); err != nil {
			return nil, wire.NewError(wire.CodeBadRequest, `"addr" must be "ip" or "ip:port"`)
		}
	}
	_, lc, err := n.requireStarted()
	if err != nil {
		return nil, err
	}
	if ip := addrIP(addr); !tsaddr.IsTailscaleIP(ip) {
		// Never ask tsnet: it may map such an address to the peer that relayed the
		// connection (Funnel's ingress node), which is not who is behind it.
		return nil, wire.NewError(wire.CodeNotFound, "%s is not a tailnet address: no tailnet node "+
			"has it (a connection through Funnel comes from the internet and has no tailnet identity)", addr)
	}
	callCtx, cancel := callContext(ctx, timeoutMS)
	defer cancel()
	who, err := lc.WhoIs(callCtx, addr)
	if errors.Is(err, local.ErrPeerNotFound) {
		return nil, wire.NewError(wire.CodeNotFound, "no tailnet node has address %s", addr)
	}
	if err != nil {
		return nil, n.callError(ctx, callCtx, "whois "+addr, timeoutMS, wire.NewError(wire.CodeInternal, "whois: %v", err))
	}
	return wire.OKReply(whoisResult(who)), nil
}

// logout talks to the control server: timeout_ms bounds it too.
func (n *node) logout(ctx context.Context, p *wire.ParamReader) (*wire.Reply, error) {
	timeoutMS := readTimeout(p)
	if p.Err != nil {
		return nil, p.Err
	}
	_, lc, err := n.requireStarted()
	if err != nil {
		return nil, err
	}
	callCtx, cancel := callContext(ctx, timeoutMS)
	defer cancel()
	if err := lc.Logout(callCtx); err != nil {
		return nil, n.callError(ctx, callCtx, "logout", timeoutMS, wire.NewError(wire.CodeInternal, "logout: %v", err))
	}
	return wire.OKReply(map[string]any{}), nil
}

// statusResult is the status map, with the helper's own counts.
func (n *node) statusResult(st *ipnstate.Status) map[string]any {
	peers := make([]map[string]any, 0, len(st.Peer))
	for _, ps := range st.Peer {
		peers = append(peers, peerResult(ps))
	}
	slices.SortFunc(peers, func(a, b map[string]any) int {
		return cmp.Compare(a["dns_name"].(string), b["dns_name"].(string))
	})
	hostname := ""
	dnsName := ""
	if st.Self != nil {
		hostname, dnsName = st.Self.HostName, st.Self.DNSName
	}
	n.mu.Lock()
	listeners, conns, packets := len(n.listeners), len(n.conns), len(n.packets)
	n.mu.Unlock()
	return map[string]any{
		"backend_state":    st.BackendState,
		"tailscale_ips":    addrStrings(st.TailscaleIPs),
		"hostname":         hostname,
		"dns_name":         dnsName,
		"magic_dns_suffix": st.MagicDNSSuffix,
		"auth_url":         st.AuthURL,
		"health":           nonNilStrings(st.Health),
		"self":             peerResult(st.Self),
		"peers":            peers,
		"goroutines":       uint64(runtime.NumGoroutine()),
		"listeners":        uint64(listeners),
		"conns":            uint64(conns),
		"packets":          uint64(packets),
	}
}

// peerResult is one peer map; a nil status (no self yet) gives empty fields.
func peerResult(ps *ipnstate.PeerStatus) map[string]any {
	if ps == nil {
		ps = new(ipnstate.PeerStatus)
	}
	return map[string]any{
		"id":             string(ps.ID),
		"hostname":       ps.HostName,
		"dns_name":       ps.DNSName,
		"tailscale_ips":  addrStrings(ps.TailscaleIPs),
		"online":         ps.Online,
		"relay":          ps.Relay,
		"cur_addr":       ps.CurAddr,
		"tags":           viewStrings(ps.Tags),
		"primary_routes": prefixStrings(ps.PrimaryRoutes),
	}
}

func viewStrings(v *views.Slice[string]) []string {
	out := []string{}
	if v != nil {
		out = append(out, v.AsSlice()...)
	}
	return out
}

func prefixStrings(v *views.Slice[netip.Prefix]) []string {
	out := []string{}
	if v != nil {
		for _, p := range v.All() {
			out = append(out, p.String())
		}
	}
	return out
}

// addrIP is the IP of "ip" or "ip:port" (already validated).
func addrIP(addr string) netip.Addr {
	if ip, err := netip.ParseAddr(addr); err == nil {
		return ip.Unmap()
	}
	return netip.MustParseAddrPort(addr).Addr().Unmap()
}

// whoisResult is the whois map.
func whoisResult(who *apitype.WhoIsResponse) map[string]any {
	node := map[string]any{
		"id": "", "name": "", "host_name": "", "addresses": []string{}, "tags": []string{},
	}
	if n := who.Node; n != nil {
		addrs := make([]string, 0, len(n.Addresses))
		for _, p := range n.Addresses {
			addrs = append(addrs, p.Addr().String())
		}
		hostName := n.ComputedName
		if n.Hostinfo.Valid() && n.Hostinfo.Hostname() != "" {
			hostName = n.Hostinfo.Hostname()
		}
		node = map[string]any{
			"id":        string(n.StableID),
			"name":      n.Name,
			"host_name": hostName,
			"addresses": addrs,
			"tags":      nonNilStrings(n.Tags),
		}
	}
	user := map[string]any{"id": int64(0), "login_name": "", "display_name": ""}
	if u := who.UserProfile; u != nil {
		user = map[string]any{
			"id":           int64(u.ID),
			"login_name":   u.LoginName,
			"display_name": u.DisplayName,
		}
	}
	return map[string]any{"node": node, "user": user}
}

func addrStrings(addrs []netip.Addr) []string {
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.String())
	}
	return out
}

func nonNilStrings(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
