package main

import (
	_ "tailscale.com/feature/identityfederation" // workload identity: tsnet needs it linked in

	"errors"
	"time"

	"tailscale.com/tsnet"

	"github.com/tsproc/tsproc/helper/internal/statestore"
	"github.com/tsproc/tsproc/helper/internal/wire"
)

// The start options beyond the basics (docs/protocol.md §4): where the state lives (a host's
// store over the control channel) and the OAuth and workload-identity credentials tsnet turns
// into an auth key.

// stateCallTimeout bounds one state_read or state_write. The host bounds its store a little
// sooner (10 s) and answers with the clearer message; this is the backstop for a host that
// does not answer at all.
const stateCallTimeout = 15 * time.Second

// credentialStart is the part of a start request that selects the state store and carries the
// OAuth credentials. The credentials are secrets: never logged, never in an error.
type credentialStart struct {
	hostState                                 bool
	clientSecret, clientID, idToken, audience string
	advertiseExitNode                         bool // offer this node as an exit node (exitnode.go)
}

func parseCredentialStart(p *wire.ParamReader, memoryState bool) (credentialStart, error) {
	c := credentialStart{
		hostState:    p.OptBool("host_state"),
		clientSecret: p.OptString("client_secret"),
		clientID:     p.OptString("client_id"),
		idToken:      p.OptString("id_token"),
		audience:     p.OptString("audience"),

		advertiseExitNode: p.OptBool("advertise_exit_node"),
	}
	if p.Err != nil {
		return c, p.Err
	}
	if c.hostState && memoryState {
		return c, wire.NewError(wire.CodeBadRequest, `"host_state" and "memory_state" exclude each other`)
	}
	return c, nil
}

// apply puts the credentials and the store into srv; host is where a host store's calls go.
// It returns the host store, or nil.
func (c credentialStart) apply(srv *tsnet.Server, host statestore.Caller) *statestore.Store {
	srv.ClientSecret = c.clientSecret
	srv.ClientID = c.clientID
	srv.IDToken = c.idToken
	srv.Audience = c.audience
	if !c.hostState {
		return nil
	}
	store := statestore.New(host, stateCallTimeout)
	srv.Store = store
	return store
}

// oauth reports whether the node logs in with OAuth or workload identity credentials.
func (c credentialStart) oauth() bool {
	return c.clientSecret != "" || c.clientID != "" || c.idToken != "" || c.audience != ""
}

// startFailed is the error of a failed tsnet Start. When the host's store failed, the host's
// own word (which names the key) is the message, with its code: the host raises
// StateStoreError. A failed exchange of OAuth credentials is auth_failed.
func startFailed(err error, c credentialStart, store *statestore.Store) error {
	if store != nil {
		if se := store.Failed(); se != nil {
			if re, ok := errors.AsType[*wire.Error](se.Err); ok {
				return wire.NewError(wire.CodeStateStore, "starting tsnet: %s", re.Message)
			}
			return wire.NewError(wire.CodeStateStore, "starting tsnet: %v", se)
		}
	}
	if c.oauth() && isKeyExchangeError(err) {
		// tsnet asks Tailscale's API (or the control server's, for workload identity) for a
		// key before anything else: name that step, which is what a user can act on.
		return wire.NewError(wire.CodeAuthFailed, "exchanging the OAuth client secret or workload "+
			"identity for an auth key failed (it needs Tailscale's API): %v", err)
	}
	return wire.NewError(wire.CodeInternal, "starting tsnet: %v", err)
}
