package main

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestUpWaitsForHomeDERP checks that up replies only once the node's home DERP region has
// registered it, so that a peer dialling the node the moment it is up is not dropped there
// (derphome.go). Without the wait, the region's first frame came 0.3-33 ms after tsnet's
// Running on this tailnet, so several nodes in a row make a reply that came early show.
func TestUpWaitsForHomeDERP(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a tailnet")
	}
	controlURL := startE2ETailnet(t)
	for i := range 6 {
		h, sess := startE2ENode(t, controlURL, fmt.Sprintf("derp-home-%d", i), e2eAuthKey)
		srv, lc, err := sess.node.requireStarted()
		if err != nil {
			t.Fatal(err)
		}
		ht := srv.Sys().HealthTracker.Get()
		h.MustCall("up", map[string]any{"timeout_ms": 30000})
		// Read at once, before any other call gives the connection time to finish: region 1
		// is startE2ETailnet's only one.
		if got := ht.GetDERPRegionReceivedTime(1); got.IsZero() {
			t.Fatalf("node %d: up replied before its home DERP region registered it", i)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		d, ok := newDERPHome(ctx, srv, lc)
		if !ok {
			cancel()
			t.Fatal("newDERPHome found no DERP region on a tailnet that has one")
		}
		region, registered := d.registered(ctx)
		cancel()
		if region != "test" || !registered {
			t.Fatalf("node %d: home region %q, registered %v; want \"test\", true", i, region, registered)
		}
	}
}
