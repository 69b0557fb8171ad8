package wire

import (
	"errors"
	"fmt"

	"github.com/tsproc/tsproc/helper/internal/jsonlog"
)

// Error codes of docs/protocol.md §8. They are part of the wire contract: never rename one.
const (
	CodeBadRequest          = "bad_request"
	CodeUnknownMethod       = "unknown_method"
	CodeUnsupportedProtocol = "unsupported_protocol"
	CodeAlreadyStarted      = "already_started"
	CodeNotStarted          = "not_started"
	CodeNotRunning          = "not_running"
	CodeAuthFailed          = "auth_failed"
	CodeNeedsLogin          = "needs_login"
	CodeTimeout             = "timeout"
	CodeDialFailed          = "dial_failed"
	CodeAddressInUse        = "address_in_use"
	CodeNotFound            = "not_found"
	CodeLimit               = "limit"
	CodeInternal            = "internal"
	CodeTLSUnavailable      = "tls_unavailable"
	CodeFunnelUnavailable   = "funnel_unavailable"
	CodeStateStore          = "state_store"
	CodeUntaggedServiceHost = "untagged_service_host"
)

// rpcError is the error half of a response: {code, message}.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// newError returns an rpcError whose message has every auth key redacted, so that no code
// path can leak one to the host (docs/protocol.md §8).
func NewError(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: jsonlog.Redact(fmt.Sprintf(format, args...))}
}

// asRPCError turns any handler error into the rpcError sent on the wire; errors that are
// not already one become "internal".
func asRPCError(err error) *Error {
	if re, ok := errors.AsType[*Error](err); ok {
		return &Error{Code: re.Code, Message: jsonlog.Redact(re.Message)}
	}
	return NewError(CodeInternal, "%v", err)
}

// protocolError is a violation of the framing or message rules (docs/protocol.md §1, §2).
// The receiver stops reading and closes the channel.
type ProtocolError struct{ msg string }

func (e *ProtocolError) Error() string { return "protocol error: " + e.msg }

func protoErrorf(format string, args ...any) error {
	return &ProtocolError{msg: fmt.Sprintf(format, args...)}
}
