"""The exceptions tsproc raises.

Every error tsproc raises on purpose derives from :class:`TsprocError`. Errors that mean "the
arguments are wrong" also derive from :class:`ValueError`, and timeouts from
:class:`TimeoutError`, so callers can catch them the way they already do.

Stream errors follow trio: a stream whose helper died raises :class:`trio.BrokenResourceError`,
one used after closing raises :class:`trio.ClosedResourceError`.

No message here ever contains an auth key: :func:`redact` runs over every text that comes from
the helper.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = [
    "AddressInUseError",
    "AuthError",
    "DialError",
    "FunnelUnavailableError",
    "HelperCrashLoop",
    "HelperDiedError",
    "HelperError",
    "HelperNotFoundError",
    "HelperVersionError",
    "InvalidArgumentError",
    "LimitError",
    "NeedsLoginError",
    "NodeClosedError",
    "NodeNotStartedError",
    "NodeTimeoutError",
    "NotFoundError",
    "ProtocolError",
    "RemoteError",
    "StateDirLocked",
    "StateStoreError",
    "TlsUnavailableError",
    "TsprocError",
    "UntaggedServiceHostError",
    "redact",
]

_SECRET = re.compile(r"\b(tskey|hskey)-[A-Za-z0-9_-]+")
# The helper's jsonlog.Redact too: a JSON Web Token (an ID token for workload identity) and a
# private key in its text form (the node state's "privkey:…").
_TOKEN = re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*|\bprivkey:[0-9a-f]+")
_URL = re.compile(r"https?://\S+")


def redact(text: str) -> str:
    """Replace every auth key (``tskey-…``, ``hskey-…``), ID token and private key in *text*
    with a placeholder."""
    return _TOKEN.sub("REDACTED", _SECRET.sub(r"\1-REDACTED", text))


class TsprocError(Exception):
    """Base class of every error tsproc raises on purpose."""


class InvalidArgumentError(TsprocError, ValueError):
    """An argument is invalid; the message names it and says what is allowed."""


class HelperError(TsprocError):
    """Something is wrong with the helper process itself (not with the tailnet)."""


class HelperNotFoundError(HelperError):
    """The helper binary is missing or cannot be executed.

    The message says where tsproc looked and how to build or point at a helper.
    """


class HelperVersionError(HelperError):
    """The helper speaks a protocol version this library does not."""

    def __init__(self, message: str, *, helper_protocol: object, host_protocol: int) -> None:
        super().__init__(message)
        self.helper_protocol = helper_protocol
        self.host_protocol = host_protocol


class ProtocolError(HelperError):
    """The helper sent something that breaks the protocol (docs/protocol.md)."""


class HelperDiedError(HelperError):
    """The helper process exited or stopped answering while an operation needed it.

    Attributes:
        returncode: the exit status (negative: killed by that signal), or None if unknown.
        stderr_tail: the helper's last log lines, newest last.
    """

    def __init__(
        self, message: str, *, returncode: int | None = None, stderr_tail: Sequence[str] = ()
    ) -> None:
        tail = list(stderr_tail)
        full = message
        if tail:
            full += "\nlast helper log lines:\n  " + "\n  ".join(tail)
        super().__init__(redact(full))
        self.returncode = returncode
        self.stderr_tail = tail


class HelperCrashLoop(HelperDiedError):
    """The helper kept dying; the supervisor gave up after the configured attempts."""


class NodeClosedError(TsprocError):
    """The node was closed (or is closing, or its start failed) and cannot do this any more."""


class NodeNotStartedError(TsprocError, RuntimeError):
    """The node is used before ``async with node:`` started it."""


class StateDirLocked(TsprocError):
    """Another node (in this or another process) is using the same state directory."""


class RemoteError(TsprocError):
    """The helper answered a request with an error.

    Attributes:
        code: the protocol's stable error code (``dial_failed``, ``timeout`` …).
    """

    code: str = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(redact(message))
        if code is not None:
            self.code = code


class AuthError(RemoteError):
    """The control server refused the node's credentials (for example a wrong auth key)."""

    code = "auth_failed"


class NeedsLoginError(RemoteError):
    """The node needs an interactive login and none happened in time.

    Attributes:
        auth_url: the URL a person must open to log the node in ('' if the helper gave none).
    """

    code = "needs_login"

    def __init__(self, message: str, *, code: str | None = None, auth_url: str = "") -> None:
        super().__init__(message, code=code)
        # The helper's message ends with the URL ("… visit https://…"): docs/protocol.md §8.
        found = _URL.search(message)
        self.auth_url = auth_url or (found.group(0) if found else "")


class NodeTimeoutError(TsprocError, TimeoutError):
    """An operation did not finish within its deadline, or the node was not running in time.

    Raised by tsproc itself when a helper does not answer within the node's own bound (then it
    is no :class:`RemoteError`), and by the helper when the time it was given ran out (then it
    is also a RemoteError with ``code == "timeout"``, and the message includes the node's
    health). A deadline the caller set with a cancel scope raises trio's own exception instead.
    """


class _RemoteTimeoutError(NodeTimeoutError, RemoteError):
    """The helper's ``timeout`` answer: the time it was given ran out."""

    code = "timeout"


class DialError(RemoteError):
    """A tailnet dial failed: unknown host, connection refused or unreachable peer."""

    code = "dial_failed"


class AddressInUseError(RemoteError):
    """Another listener on this node already holds that port."""

    code = "address_in_use"


class NotFoundError(RemoteError):
    """The helper knows no such object (listener, peer for WhoIs …)."""

    code = "not_found"


class LimitError(RemoteError):
    """A resource bound was hit (listeners per node, requests in flight …)."""

    code = "limit"


class TlsUnavailableError(RemoteError):
    """The tailnet issues no HTTPS certificates to this node (HTTPS is off in its admin
    console, or it is a test tailnet): TLS and Funnel listeners cannot work."""

    code = "tls_unavailable"


class FunnelUnavailableError(RemoteError):
    """The tailnet does not let this node use Funnel (policy, node attribute or port)."""

    code = "funnel_unavailable"


class StateStoreError(RemoteError):
    """The node's state store (``Node(state=store)``) raised or did not answer in time, so
    tsnet could not read or write its state; the message names the key, never a value."""

    code = "state_store"


class UntaggedServiceHostError(RemoteError):
    """Only tagged nodes may host a Tailscale Service (tsnet's ``ErrUntaggedServiceHost``):
    give the node ``tags=``."""

    code = "untagged_service_host"


class _RemoteBadRequest(RemoteError, InvalidArgumentError):
    """The helper refused a field: tsproc validates first, so this is rare."""

    code = "bad_request"


_BY_CODE: dict[str, type[RemoteError]] = {
    cls.code: cls
    for cls in (
        AuthError,
        NeedsLoginError,
        _RemoteTimeoutError,
        DialError,
        AddressInUseError,
        NotFoundError,
        LimitError,
        TlsUnavailableError,
        FunnelUnavailableError,
        StateStoreError,
        UntaggedServiceHostError,
        _RemoteBadRequest,
    )
}


def error_from_remote(code: str, message: str) -> RemoteError:
    """Build the typed exception for an error answer ``{code, message}`` from the helper."""
    cls = _BY_CODE.get(code, RemoteError)
    return cls(message, code=code)
