package main

import (
	"context"
	"net/netip"
	"strings"

	"tailscale.com/client/local"
	"tailscale.com/ipn"
)

// lookupServiceName resolves the name of a Tailscale Service — "svc:web", or its MagicDNS name
// "web.<tailnet domain>" — to its virtual IP, from the DNS records of the node's netmap, as
// MagicDNS answers it: never from the system's DNS. ok is false when no record has the name.
// Only names a peer lookup did not find come here; the netmap is read once per call.
func lookupServiceName(ctx context.Context, lc *local.Client, name string) (ip netip.Addr, ok bool, err error) {
	w, err := lc.WatchIPNBus(ctx, ipn.NotifyInitialNetMap|ipn.NotifyNoPrivateKeys)
	if err != nil {
		return ip, false, err
	}
	defer w.Close()
	var nm *ipn.Notify
	for nm == nil || nm.NetMap == nil {
		n, err := w.Next()
		if err != nil {
			return ip, false, err
		}
		nm = &n
	}
	suffix := strings.Trim(nm.NetMap.MagicDNSSuffix(), ".")
	want := strings.Trim(strings.ToLower(name), ".")
	if short, isSvc := strings.CutPrefix(want, "svc:"); isSvc {
		want = short + "." + suffix
	} else if !strings.Contains(want, ".") {
		want += "." + suffix
	}
	for _, r := range nm.NetMap.DNS.ExtraRecords {
		if r.Type != "" && r.Type != "A" && r.Type != "AAAA" {
			continue
		}
		if strings.Trim(strings.ToLower(r.Name), ".") != want {
			continue
		}
		if a, err := netip.ParseAddr(r.Value); err == nil && (!ok || a.Is4()) {
			ip, ok = a, true // IPv4 first, as for nodes
		}
	}
	return ip, ok, nil
}
