package main

import (
	"errors"
	"fmt"
)

// Error codes of docs/protocol.md §8. They are part of the wire contract: never rename one.
const (
	codeBadRequest          = "bad_request"
	codeUnknownMethod       = "unknown_method"
	codeUnsupportedProtocol = "unsupported_protocol"
	codeAlreadyStarted      = "already_started"
	codeNotStarted          = "not_started"
	codeNotRunning          = "not_running"
	codeAuthFailed          = "auth_failed"
	codeNeedsLogin          = "needs_login"
	codeTimeout             = "timeout"
	codeDialFailed          = "dial_failed"
	codeAddressInUse        = "address_in_use"
	codeNotFound            = "not_found"
	codeLimit               = "limit"
	codeInternal            = "internal"
	codeTLSUnavailable      = "tls_unavailable"
	codeFunnelUnavailable   = "funnel_unavailable"
)

// rpcError is the error half of a response: {code, message}.
type rpcError struct {
	Code    string
	Message string
}

func (e *rpcError) Error() string { return e.Code + ": " + e.Message }

// newError returns an rpcError whose message has every auth key redacted, so that no code
// path can leak one to the host (docs/protocol.md §8).
func newError(code, format string, args ...any) *rpcError {
	return &rpcError{Code: code, Message: redact(fmt.Sprintf(format, args...))}
}

// asRPCError turns any handler error into the rpcError sent on the wire; errors that are
// not already one become "internal".
func asRPCError(err error) *rpcError {
	if re, ok := errors.AsType[*rpcError](err); ok {
		return &rpcError{Code: re.Code, Message: redact(re.Message)}
	}
	return newError(codeInternal, "%v", err)
}

// protocolError is a violation of the framing or message rules (docs/protocol.md §1, §2).
// The receiver stops reading and closes the channel.
type protocolError struct{ msg string }

func (e *protocolError) Error() string { return "protocol error: " + e.msg }

func protoErrorf(format string, args ...any) error {
	return &protocolError{msg: fmt.Sprintf(format, args...)}
}
