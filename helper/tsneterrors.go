package main

import (
	"errors"
	"strings"

	"golang.org/x/sys/unix"
)

// Every place the helper tells tsnet's errors apart by their text. tsnet returns plain
// errors.New / fmt.Errorf values for these cases, with no sentinel to match with errors.Is;
// keeping the matches here makes a tsnet upgrade that rewords one a one-file review.

// isPortInUse reports whether a tsnet TCP listen failed because another listener of this node
// holds the port ("listener already open for tcp, :80").
func isPortInUse(err error) bool {
	return strings.Contains(err.Error(), "already open")
}

// isUDPPortInUse reports whether a tsnet ListenPacket failed because the port is taken
// (netstack's "port is in use", or EADDRINUSE).
func isUDPPortInUse(err error) bool {
	return errors.Is(err, unix.EADDRINUSE) || strings.Contains(err.Error(), "in use")
}

// isAuthError reports whether an error from tsnet's Up is the control server refusing the
// login. Up reports the backend's ErrMessage (for example "invalid authkey") as "backend:".
func isAuthError(err error) bool {
	msg := strings.ToLower(err.Error())
	for _, s := range []string{"backend:", "authkey", "auth key", "invalid key", "unauthorized"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// isKeyExchangeError reports whether tsnet's Start failed exchanging an OAuth client secret or
// a workload identity for an auth key ("error resolving auth key: …").
func isKeyExchangeError(err error) bool {
	return strings.Contains(err.Error(), "resolving auth key")
}

// isConnRefused reports whether a netstack dial was refused by the target (a RST to the SYN):
// gonet reports gVisor's ErrConnectionRefused by its text, "connection was refused".
func isConnRefused(err error) bool {
	return errors.Is(err, unix.ECONNREFUSED) || strings.Contains(err.Error(), "connection was refused")
}
