package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tsproc/tsproc/helper/internal/wire"
	"github.com/tsproc/tsproc/helper/internal/wire/wiretest"
)

// The tailnet boundary: dial, dial_udp and ping_peer reach only addresses a node in the netmap
// holds. A Tailscale IP that no node holds is refused at once, before any packet is sent.
//
// These tests must not be able to leak themselves, so they run only in a network namespace of
// their own (tools/in-netns: lo and a dead-end veth pair). There the would-be destinations are
// put on lo with a listener behind them — a trap: had a dial gone through the host network, as
// tsnet's own Dial does for addresses its netmap does not route, it would have connected there.

// Addresses in Tailscale's ranges that no node holds: testcontrol hands out 100.64.x.y and their
// fd7a:115c:a1e0::6440:xxyy twins.
const (
	unheldIPv4 = "100.99.0.99"
	unheldIPv6 = "fd7a:115c:a1e0::99:99"
)

// inOwnNetns runs the calling test in a network namespace of its own: it returns true when
// already there (TSPROC_NETNS=dead-end, set by tools/in-netns); otherwise it reruns just this
// test under tools/in-netns and returns false, or skips where no namespace can be made
// (not root, no unshare).
func inOwnNetns(t *testing.T) bool {
	t.Helper()
	if os.Getenv("TSPROC_NETNS") == "dead-end" {
		return true
	}
	script, err := filepath.Abs("../tools/in-netns")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(script, "--check").Output()
	if err != nil || len(out) == 0 {
		t.Skip("needs a network namespace of its own (root and unshare): run it with " +
			"`tools/in-netns go test ...` or `make test` as root")
	}
	args := []string{os.Args[0], "-test.run=^" + t.Name() + "$", "-test.count=1"}
	if testing.Verbose() {
		args = append(args, "-test.v")
	}
	cmd := exec.Command(script, args...)
	output, err := cmd.CombinedOutput()
	t.Logf("in its own network namespace:\n%s", output)
	if err != nil {
		t.Fatalf("the test in its own network namespace: %v", err)
	}
	return false
}

// trap puts addr on lo and listens on it (TCP and UDP, port): it counts what arrives.
func trap(t *testing.T, addr string, port string) (arrived *atomic.Int64) {
	t.Helper()
	args := []string{"address", "replace", addr + "/32", "dev", "lo"}
	if strings.Contains(addr, ":") {
		args = []string{"address", "replace", addr + "/128", "dev", "lo", "nodad"} // usable at once
	}
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip address replace %s: %v %s", addr, err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "address", "del", args[2], "dev", "lo").Run() })
	arrived = new(atomic.Int64)
	ln, err := net.Listen("tcp", net.JoinHostPort(addr, port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			arrived.Add(1)
			c.Close()
		}
	}()
	pc, err := net.ListenPacket("udp", net.JoinHostPort(addr, port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			arrived.Add(1)
		}
	}()
	return arrived
}

func TestDialStaysOnTheTailnet(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a tailnet")
	}
	if !inOwnNetns(t) {
		return
	}
	arrived4 := trap(t, unheldIPv4, "8080")
	arrived6 := trap(t, unheldIPv6, "8080")

	controlURL := startE2ETailnet(t)
	a, _ := startE2ENode(t, controlURL, "node-a", e2eAuthKey)
	b, _ := startE2ENode(t, controlURL, "node-b", e2eAuthKey)
	var aIPs []any
	for name, h := range map[string]*wiretest.Host{"a": a, "b": b} {
		if m := h.CallWithin(40*time.Second, "up", map[string]any{"timeout_ms": 30000}); m.Err != nil {
			t.Fatalf("up %s: %v", name, m.Err)
		} else if name == "a" {
			aIPs = m.Result["tailscale_ips"].([]any)
		}
	}
	a.MustCall("listen", map[string]any{"network": "tcp", "port": 8080, "backlog": 16})
	waitForRelay(t, b, "node-a")

	// A node's addresses, both families, are dialled as before.
	for _, ip := range aIPs {
		m := b.CallWithin(30*time.Second, "dial", map[string]any{"network": "tcp", "host": ip, "port": 8080, "timeout_ms": 20000})
		if m.Err != nil {
			t.Fatalf("dial node-a at %s: %v", ip, m.Err)
		}
		takeConn(t, m.FD).Close()
	}

	// An address nobody holds is dial_failed at once (not a timeout: nothing was sent).
	for _, ip := range []string{unheldIPv4, unheldIPv6, "[" + unheldIPv6 + "]"} {
		for _, call := range []struct {
			method string
			params map[string]any
		}{
			{"dial", map[string]any{"network": "tcp", "host": ip, "port": 8080, "timeout_ms": 20000}},
			{"dial_udp", map[string]any{"host": ip, "port": 8080, "timeout_ms": 20000}},
			{"ping_peer", map[string]any{"host": ip, "timeout_ms": 20000}},
		} {
			m := b.CallWithin(30*time.Second, call.method, call.params)
			if m.Err == nil {
				if m.FD >= 0 { // a packet socket: what would it have reached?
					c := takeConn(t, m.FD)
					c.Write([]byte("leak?"))
				}
				t.Errorf("%s %s: %v, want dial_failed", call.method, ip, m.Result)
				continue
			}
			if wiretest.ErrCode(m) != wire.CodeDialFailed || !strings.Contains(m.Err.Message, "not an address on the tailnet") {
				t.Errorf("%s %s: %+v, want dial_failed: not an address on the tailnet", call.method, ip, m.Err)
			}
		}
	}
	if n := arrived4.Load() + arrived6.Load(); n != 0 {
		t.Errorf("%d connections or datagrams reached the host network's %s / %s", n, unheldIPv4, unheldIPv6)
	}
}
