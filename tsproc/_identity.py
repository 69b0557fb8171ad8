"""A served connection's peer, as the tailnet says: what :mod:`tsproc.asgi`,
:func:`tsproc.aio.serve_asgi` and :mod:`tsproc.websocket` share.

It does not import hypercorn (an optional extra), so :mod:`tsproc.aio` can use it without
loading it: the WhoIs of a new connection's peer under one deadline, and the ASGI identity
wrapper (forged identity headers out, the verified identity in as a scope extension).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol, final

import trio

from ._core.node import Node
from ._core.types import Addr, WhoIs
from .errors import TsprocError

if TYPE_CHECKING:
    from hypercorn.typing import AppWrapper

__all__ = [
    "IDENTITY_HEADER_PREFIXES",
    "WHOIS_EXTENSION",
    "WHOIS_TIMEOUT",
    "PeerApp",
    "TailnetSocketInfo",
    "identity",
    "whois_peer",
]

WHOIS_TIMEOUT: Final = 10.0
"""How long a server waits for the WhoIs of a new connection's peer before it closes it."""

WHOIS_EXTENSION: Final = "tsproc.whois"
"""The key of the peer's identity in ``scope["extensions"]``."""

IDENTITY_HEADER_PREFIXES: Final = (b"tailscale-", b"x-tailscale-", b"x-webauth-")
"""Request headers starting with these (lower case, ``_`` as ``-``) are removed."""


async def whois_peer(node: Node, addr: Addr, log: logging.Logger | None) -> WhoIs | None:
    """The WhoIs of the peer at *addr*, or None when the tailnet cannot say within
    :data:`WHOIS_TIMEOUT` (then the caller closes the connection; *log*, if given, says why).
    Runs in the node's trio run."""
    reason = f"no answer within {WHOIS_TIMEOUT:g} s"
    with trio.move_on_after(WHOIS_TIMEOUT):
        try:
            return await node.whois(addr)
        except TsprocError as exc:
            reason = str(exc)
    if log is not None:
        log.warning("closing connection from %s: WhoIs failed: %s", addr, reason)
    return None


def is_identity_header(name: bytes) -> bool:
    # Some stacks (WSGI/CGI environ, nginx with underscores_in_headers) read `Tailscale_User_Login`
    # as `Tailscale-User-Login`; a forger must not get through with an underscore.
    return name.lower().replace(b"_", b"-").startswith(IDENTITY_HEADER_PREFIXES)


def identity(who: WhoIs) -> dict[str, Any]:
    """The ``tsproc.whois`` scope extension of a peer."""
    return {
        "login_name": who.user.login_name,
        "display_name": who.user.display_name,
        "user_id": who.user.id,
        "hostname": who.node.hostname,
        "dns_name": who.node.dns_name,
        "node_id": who.node.id,
        "tags": list(who.node.tags),
        "tailscale_ips": [str(ip) for ip in who.node.tailscale_ips],
        "whois": who,
    }


@final
class PeerApp:
    """The application as hypercorn calls it (its AppWrapper protocol) for one tailnet
    connection: forged identity headers out, the verified identity in."""

    def __init__(self, app: AppWrapper, peer_identity: dict[str, Any] | None) -> None:
        self._app = app
        self._identity = peer_identity

    async def __call__(
        self,
        scope: Any,
        receive: Any,
        send: Any,
        sync_spawn: Callable[..., Any],
        call_soon: Callable[..., Any],
    ) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = dict(scope)
            scope["headers"] = [
                (name, value) for name, value in scope["headers"]
                if not is_identity_header(name)
            ]
            extensions = dict(scope.get("extensions") or {})
            extensions.pop(WHOIS_EXTENSION, None)
            if self._identity is not None:
                # Each request gets its own copy: one request's app cannot edit the next one's.
                extensions[WHOIS_EXTENSION] = dict(
                    self._identity, tags=list(self._identity["tags"]),
                    tailscale_ips=list(self._identity["tailscale_ips"]))
            scope["extensions"] = extensions
        await self._app(scope, receive, send, sync_spawn, call_soon)


class _Addressed(Protocol):
    """A tailnet connection's two addresses: a TailnetStream, or tsproc.aio's writer."""

    @property
    def local_addr(self) -> Addr: ...
    @property
    def remote_addr(self) -> Addr: ...


@final
class TailnetSocketInfo:
    """What hypercorn reads of a connection's socket (trio's TCPServer, and through
    ``get_extra_info("socket")`` asyncio's): the family and the two addresses. It
    reports the tailnet ones (the real socket is a socketpair with no addresses), which is how
    ``scope["client"]`` becomes the tailnet peer."""

    def __init__(self, stream: _Addressed) -> None:
        self._local = stream.local_addr
        self._remote = stream.remote_addr
        self.family = socket.AF_INET6 if ":" in self._remote[0] else socket.AF_INET

    def getpeername(self) -> Addr:
        return self._remote

    def getsockname(self) -> Addr:
        return self._local
