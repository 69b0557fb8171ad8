package main

import (
	"context"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/health"
	"tailscale.com/tsnet"
)

// derpHomeWait bounds how long up waits for the node's home DERP region to register it after
// tsnet says Running: on the local tailnet that takes 0.3-33 ms, and a node whose region
// cannot be reached is still reachable on direct paths, so up goes ahead after this.
const derpHomeWait = 2 * time.Second

// derpHomePoll is how often up looks again while the region has not registered the node.
const derpHomePoll = 2 * time.Millisecond

// A derpHome tells whether this node's home DERP region has registered it.
//
// tsnet reports Running while magicsock is still connecting to the home region it has just
// chosen, and the control server tells the other nodes that region at the same time. A peer
// that dials the new node at once sends WireGuard's handshake initiation to that region (until
// a direct path is confirmed magicsock sends through DERP only); if the region has not
// registered the node yet it drops the packet as addressed to an unknown key, and wireguard-go
// sends the next initiation only 5 s later (REKEY_TIMEOUT): the peer's first dial takes 5 s.
// On the local tailnet, in "start a node, dial it at once", the dial began before the region's
// first frame had reached the new node in 98 of 159 rounds (the initiation itself follows a
// few milliseconds later, so few are lost: 0 in those rounds). A region sends its first frame
// (ServerInfo) after registering the node, so once one has arrived nothing sent to the node
// through the region is dropped for want of it. The other half of the same race, a dial
// before the peer's netmap names the new node's region at all, is peerPaths'.
type derpHome struct {
	health *health.Tracker
	lc     *local.Client
	ids    map[string]int // region code → region ID
}

// newDERPHome reads the DERP map; ok is false for a tailnet without DERP regions, where
// nothing can drop a peer's packets.
func newDERPHome(ctx context.Context, srv *tsnet.Server, lc *local.Client) (d *derpHome, ok bool) {
	ht, found := srv.Sys().HealthTracker.GetOK()
	if !found {
		return nil, false
	}
	dm, err := lc.CurrentDERPMap(ctx)
	if err != nil || dm == nil || len(dm.Regions) == 0 {
		return nil, false
	}
	d = &derpHome{health: ht, lc: lc, ids: make(map[string]int, len(dm.Regions))}
	for id, r := range dm.Regions {
		d.ids[r.RegionCode] = id
	}
	return d, true
}

// registered reports the home region magicsock has chosen (status names it; empty until
// netcheck has chosen one) and whether a frame from it has arrived.
func (d *derpHome) registered(ctx context.Context) (region string, ok bool) {
	st, err := d.lc.StatusWithoutPeers(ctx)
	if err != nil || st.Self == nil || st.Self.Relay == "" {
		return "", false
	}
	id, known := d.ids[st.Self.Relay]
	if !known {
		return st.Self.Relay, true // a region the map does not name: nothing to wait for
	}
	return st.Self.Relay, !d.health.GetDERPRegionReceivedTime(id).IsZero()
}

// awaitDERPHome returns once this node's home DERP region has registered it, after
// derpHomeWait, or when ctx ends; ok is false if it gave up, and waited says how long it took.
func awaitDERPHome(ctx context.Context, srv *tsnet.Server, lc *local.Client) (region string, waited time.Duration, ok bool) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, derpHomeWait)
	defer cancel()
	d, hasDERP := newDERPHome(ctx, srv, lc)
	if !hasDERP {
		return "", time.Since(start), true
	}
	for {
		if region, ok = d.registered(ctx); ok {
			return region, time.Since(start), true
		}
		select {
		case <-ctx.Done():
			return region, time.Since(start), false
		case <-time.After(derpHomePoll):
		}
	}
}
