package localtailnet

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"time"

	"tailscale.com/tailcfg"
	"tailscale.com/tstest/integration/testcontrol"
	"tailscale.com/types/key"
	"tailscale.com/types/logger"
)

// Tailscale Services (svc:name) on the local tailnet, granted as Tailscale's control server
// grants them to a tailnet whose policy auto-approves every service host, and as tsnet's own
// tests set them up (setUpServiceState in tsnet_test.go): each service gets a virtual IP and
// a MagicDNS record; every tagged node that advertises it gets the "service-host" capability
// mapping the name to the VIP; and one of them — the primary — gets the VIP as a route, so
// that clients (which accept routes) send the service's traffic to it. When the primary stops
// hosting, or leaves, the next host becomes primary.
//
// A node says it hosts services by a new Hostinfo.ServicesHash; the list itself comes from
// the node over c2n (GET /vip-services), as with real control.

// serviceVIPBase is where the services' virtual IPs are allocated: inside the Tailscale range,
// far from the addresses testcontrol gives nodes.
var serviceVIPBase = netip.MustParseAddr("100.99.0.1")

const (
	c2nTimeout        = 2 * time.Second
	hostCheckInterval = time.Second
	// unknownHash marks a node whose services could not be asked (asked again each second).
	unknownHash = "?"
)

// serviceHosts is the local tailnet's view of who hosts which service.
type serviceHosts struct {
	control *testcontrol.Server
	logf    logger.Logf
	vips    map[tailcfg.ServiceName]netip.Addr
	hashes  map[key.NodePublic]string                // last ServicesHash asked about
	hosted  map[key.NodePublic][]tailcfg.ServiceName // active services, tagged nodes only
	caps    map[key.NodePublic]bool                  // nodes given the service-host capability
	checked map[key.NodePublic]time.Time             // when each node was last asked
}

func newServiceHosts(control *testcontrol.Server, logf logger.Logf) *serviceHosts {
	return &serviceHosts{
		control: control,
		logf:    logf,
		vips:    map[tailcfg.ServiceName]netip.Addr{},
		hashes:  map[key.NodePublic]string{},
		hosted:  map[key.NodePublic][]tailcfg.ServiceName{},
		caps:    map[key.NodePublic]bool{},
		checked: map[key.NodePublic]time.Time{},
	}
}

// update asks every node whose services changed what it hosts, and grants the capability
// to the hosts. It returns the VIP routes each node is primary for.
func (s *serviceHosts) update(ctx context.Context, nodes []*tailcfg.Node) map[key.NodePublic][]netip.Prefix {
	present := map[key.NodePublic]bool{}
	now := time.Now()
	type answer struct {
		services []tailcfg.ServiceName
		err      error
	}
	asked := map[*tailcfg.Node]*answer{}
	var wg sync.WaitGroup
	for _, n := range nodes {
		present[n.Key] = true
		hash := ""
		if n.Hostinfo.Valid() {
			hash = n.Hostinfo.ServicesHash()
		}
		gone := !n.KeyExpiry.IsZero() && n.KeyExpiry.Before(now) // logged out
		hosting := len(s.hosted[n.Key]) > 0
		// A host is asked again every second even if its hash did not change: a host that
		// stopped must hand its services over to the others.
		due := (hosting || s.hashes[n.Key] == unknownHash) && now.Sub(s.checked[n.Key]) >= hostCheckInterval
		if (gone && !hosting) || (!gone && hash == s.hashes[n.Key] && !due) {
			continue
		}
		s.checked[n.Key] = now
		a := new(answer)
		asked[n] = a
		if !gone {
			// In parallel: a node that stopped without logging out answers nothing until
			// the timeout, which must not hold up the others.
			wg.Go(func() { a.services, a.err = s.ask(ctx, n.Key) })
		}
	}
	wg.Wait()
	for n, a := range asked {
		services := a.services
		if a.err != nil {
			s.logf("services of %s: %v", n.Hostinfo.Hostname(), a.err)
			s.hashes[n.Key] = unknownHash // asked again
		} else if n.Hostinfo.Valid() {
			s.hashes[n.Key] = n.Hostinfo.ServicesHash()
		}
		if len(n.Tags) == 0 {
			services = nil // only tagged nodes may host a service
		}
		if !slices.Equal(services, s.hosted[n.Key]) {
			s.logf("services hosted by %s: %v", n.Hostinfo.Hostname(), services)
		}
		s.hosted[n.Key] = services
		for _, svc := range services {
			if _, ok := s.vips[svc]; !ok {
				s.allocate(svc)
			}
		}
		s.grant(n.Key, services)
	}
	for k := range s.hosted {
		if !present[k] {
			delete(s.hosted, k)
			delete(s.hashes, k)
			delete(s.caps, k)
			delete(s.checked, k)
		}
	}
	// The primary of each service: its host with the smallest key, for a stable choice.
	routes := map[key.NodePublic][]netip.Prefix{}
	for svc, vip := range s.vips {
		var hosts []key.NodePublic
		for k, services := range s.hosted {
			if slices.Contains(services, svc) {
				hosts = append(hosts, k)
			}
		}
		if len(hosts) == 0 {
			continue
		}
		primary := slices.MinFunc(hosts, func(a, b key.NodePublic) int { return a.Compare(b) })
		routes[primary] = append(routes[primary], netip.PrefixFrom(vip, vip.BitLen()))
	}
	return routes
}

// ask fetches the active services node k hosts, over c2n.
func (s *serviceHosts) ask(ctx context.Context, k key.NodePublic) ([]tailcfg.ServiceName, error) {
	ctx, cancel := context.WithTimeout(ctx, c2nTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://local-tailnet/vip-services", nil)
	if err != nil {
		return nil, err
	}
	res, err := (&http.Client{Transport: s.control.NodeRoundTripper(k)}).Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("c2n vip-services: %s", res.Status)
	}
	var got tailcfg.C2NVIPServicesResponse
	if err := json.NewDecoder(res.Body).Decode(&got); err != nil {
		return nil, err
	}
	var names []tailcfg.ServiceName
	for _, svc := range got.VIPServices {
		if svc.Active && svc.Name.Validate() == nil {
			names = append(names, svc.Name)
		}
	}
	slices.Sort(names)
	return names, nil
}

// allocate gives svc the next VIP and its MagicDNS record (<name>.<tailnet domain>).
func (s *serviceHosts) allocate(svc tailcfg.ServiceName) {
	vip := serviceVIPBase
	for range len(s.vips) {
		vip = vip.Next()
	}
	s.vips[svc] = vip
	s.control.AddDNSRecords(tailcfg.DNSRecord{
		Name:  svc.WithoutPrefix() + "." + s.control.MagicDNSDomain,
		Value: vip.String(),
	})
}

// grant sets node k's service-host capability to its services (and removes it when there
// are none), on top of the tailnet's default capabilities.
func (s *serviceHosts) grant(k key.NodePublic, services []tailcfg.ServiceName) {
	if len(services) == 0 && !s.caps[k] {
		return
	}
	capMap := tailcfg.NodeCapMap{}
	if d := s.control.DefaultNodeCapabilities; d != nil {
		capMap = maps.Clone(*d)
	}
	if len(services) > 0 {
		mapping := tailcfg.ServiceIPMappings{}
		for _, svc := range services {
			mapping[svc] = []netip.Addr{s.vips[svc]}
		}
		raw, err := json.Marshal(mapping)
		if err != nil {
			return
		}
		capMap[tailcfg.NodeAttrServiceHost] = []tailcfg.RawMessage{tailcfg.RawMessage(raw)}
	}
	s.caps[k] = len(services) > 0
	s.control.SetNodeCapMap(k, capMap)
}
