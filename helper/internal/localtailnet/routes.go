package localtailnet

import (
	"cmp"
	"context"
	"net/netip"
	"slices"
	"time"

	"tailscale.com/tstest/integration/testcontrol"
	"tailscale.com/types/key"
	"tailscale.com/types/logger"
)

// routeCheckInterval is how often the local tailnet looks for newly advertised subnet routes.
// testcontrol has no hook that runs after it stores a node's Hostinfo (its map-request hook
// runs before, with its lock held), so the approver looks at the nodes instead.
const routeCheckInterval = 200 * time.Millisecond

// runRouteApprover approves every subnet route a node advertises (Hostinfo.RoutableIPs), as
// a tailnet whose policy auto-approves all routes does, until ctx is done. A node that stops
// advertising a route loses it. Exit routes (0.0.0.0/0, ::/0) are routes like any other.
// It also hosts Tailscale Services (services.go), whose VIPs are routes of their primary host.
func runRouteApprover(ctx context.Context, control *testcontrol.Server, logf logger.Logf) {
	approved := map[key.NodePublic][]netip.Prefix{}
	services := newServiceHosts(control, logf)
	t := time.NewTicker(routeCheckInterval)
	defer t.Stop()
	for {
		nodes := control.AllNodes()
		vipRoutes := services.update(ctx, nodes)
		for _, n := range nodes {
			var want []netip.Prefix
			if n.Hostinfo.Valid() {
				want = n.Hostinfo.RoutableIPs().AsSlice()
			}
			want = append(want, vipRoutes[n.Key]...)
			slices.SortFunc(want, func(a, b netip.Prefix) int {
				if c := a.Addr().Compare(b.Addr()); c != 0 {
					return c
				}
				return cmp.Compare(a.Bits(), b.Bits())
			})
			if !slices.Equal(want, approved[n.Key]) {
				logf("routes of %s: %v", n.Hostinfo.Hostname(), want)
				control.SetSubnetRoutes(n.Key, want)
				approved[n.Key] = want
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
