package localtailnet

// The --https mode of the local tailnet: certificates from an embedded ACME server
// (internal/localca) and Funnel through a local ingress node (internal/ingress).

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/tsproc/tsproc/helper/internal/ingress"
	"github.com/tsproc/tsproc/helper/internal/localca"
	"tailscale.com/envknob"
	"tailscale.com/logtail"
	"tailscale.com/net/netns"
	"tailscale.com/tailcfg"
	"tailscale.com/tstest/integration/testcontrol"
)

// HTTPSInfo is what the JSON line adds in --https mode.
type HTTPSInfo struct {
	// ACMEDirectoryURL and ACMETrustPEM are for nodes: their start parameters
	// acme_directory_url and acme_roots (docs/protocol.md).
	ACMEDirectoryURL string `json:"acme_directory_url"`
	ACMETrustPEM     string `json:"acme_roots"`
	// CACert is the CA that issues the nodes' certificates, for their clients.
	CACert string `json:"ca_cert"`
	// FunnelPorts maps each public Funnel port ("443") to the loopback port that plays it.
	FunnelPorts     map[string]int `json:"funnel_ports"`
	IngressHostname string         `json:"ingress_hostname"`
	IngressTag      string         `json:"ingress_tag"`
}

// ingressUpTimeout bounds how long the ingress node may take to join the tailnet.
const ingressUpTimeout = 30 * time.Second

// localHTTPS is the running ACME server and, once started, the ingress relay.
type localHTTPS struct {
	cfg   controlConfig
	ca    *localca.Server
	relay *ingress.Relay
	dir   string // the ingress node's state directory
}

// startLocalHTTPS starts the ACME and DNS servers and sets control up to use them: DNS-01
// records go to our DNS server, and nodes get the capabilities for certificates and Funnel.
func startLocalHTTPS(cfg controlConfig, control *testcontrol.Server) (*localHTTPS, error) {
	ca, err := localca.Start(cfg.listenAddr, localca.Logf(cfg.logf("debug", "acme")))
	if err != nil {
		return nil, err
	}
	control.OnSetDNS = func(req *tailcfg.SetDNSRequest) error {
		if req.Type != "TXT" {
			return fmt.Errorf("only TXT records, not %q", req.Type)
		}
		ca.AddTXT(req.Name, req.Value)
		return nil
	}
	ports := ""
	for _, p := range ingress.Ports {
		if ports != "" {
			ports += ","
		}
		ports += strconv.Itoa(p)
	}
	control.DefaultNodeCapabilities = &tailcfg.NodeCapMap{
		tailcfg.CapabilityHTTPS: nil,
		tailcfg.NodeAttrFunnel:  nil,
		tailcfg.CapabilityFunnelPorts + "?ports=" + tailcfg.NodeCapability(ports): {},
	}
	return &localHTTPS{cfg: cfg, ca: ca}, nil
}

func (h *localHTTPS) closeCA(ctx context.Context) { h.ca.Close(ctx) }

// startIngress brings the ingress node up and marks it as Funnel's ingress: its peerAPI
// requests are unsigned, and the filter (testcontrol's) grants it the ingress capability.
func (h *localHTTPS) startIngress(ctx context.Context, controlURL string, control *testcontrol.Server) (*HTTPSInfo, error) {
	dir, err := os.MkdirTemp("", "tsproc-ingress-")
	if err != nil {
		return nil, fmt.Errorf("ingress state directory: %w", err)
	}
	h.dir = dir
	// As in node mode: no log upload, and no interface binding for a loopback control URL.
	envknob.SetNoLogsNoSupport()
	logtail.Disable()
	netns.SetEnabled(false)
	upCtx, cancel := context.WithTimeout(ctx, ingressUpTimeout)
	defer cancel()
	relay, err := ingress.Start(upCtx, ingress.Config{
		ControlURL: controlURL,
		Dir:        dir,
		Addr:       h.cfg.listenAddr,
		Logf:       h.cfg.logf("info", "ingress"),
		TsnetLogf:  h.cfg.logf("debug", "ingress"),
	})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	h.relay = relay
	control.SetUnsignedPeerAPIOnly(relay.NodeKey(), true)
	ports := map[string]int{}
	for public, local := range relay.Ports() {
		ports[strconv.Itoa(public)] = local
	}
	return &HTTPSInfo{
		ACMEDirectoryURL: h.ca.DirectoryURL(),
		ACMETrustPEM:     string(h.ca.TrustPEM()),
		CACert:           string(h.ca.RootPEM()),
		FunnelPorts:      ports,
		IngressHostname:  ingress.Hostname,
		IngressTag:       ingress.Tag,
	}, nil
}

func (h *localHTTPS) closeIngress(context.Context) {
	h.relay.Close()
	os.RemoveAll(h.dir)
}
