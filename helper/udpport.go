package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"tailscale.com/tsnet"
)

// The node's WireGuard UDP port outlives its helper: each helper binds the port the previous
// one used (kept in the state directory), falling back to any port if it is taken. A peer that
// talked to the dead helper directly goes on sending to that address for seconds — its
// handshake answers included — until its path times out; on the same port, the new helper
// gets them at once. Without it, the first WireGuard handshake of a new helper with such a
// peer was lost about half the time and repeated only 5 s later, delaying everything the new
// helper sends it, reset_peers's probes included.

// udpPortFile is in the state directory, next to tsnet's own files.
const udpPortFile = "tsproc-udp-port"

// savedUDPPort is the port the previous helper of the node in stateDir used, or 0.
func savedUDPPort(stateDir string) uint16 {
	b, err := os.ReadFile(filepath.Join(stateDir, udpPortFile))
	if err != nil {
		return 0
	}
	port, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 16)
	if err != nil {
		return 0
	}
	return uint16(port)
}

// saveUDPPort records the port srv's magicsock is bound to, for the next helper.
func saveUDPPort(srv *tsnet.Server, stateDir string) {
	ms, ok := srv.Sys().MagicSock.GetOK()
	if !ok {
		return
	}
	port := ms.LocalPort()
	if port == 0 {
		return
	}
	path := filepath.Join(stateDir, udpPortFile)
	if err := os.WriteFile(path, []byte(strconv.Itoa(int(port))+"\n"), 0o600); err != nil {
		helperLogf("saving the UDP port: %v", err)
	}
}
