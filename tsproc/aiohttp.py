"""aiohttp over the tailnet (``pip install 'tsproc[aiohttp]'``): a connector for
:class:`aiohttp.ClientSession` whose connections are dials of a :class:`tsproc.aio.Node`.

    import aiohttp, tsproc.aio, tsproc.aiohttp

    async with tsproc.aio.Node("client", auth_key=key) as node, \\
            aiohttp.ClientSession(connector=tsproc.aiohttp.TailnetConnector(node)) as session:
        async with session.get("http://web/") as response:   # MagicDNS name of a tailnet node
            print(await response.text())

URL hosts are tailnet names or IPs, and are never looked up in the system's DNS. ``https://``
runs TLS over the tailnet connection and verifies the certificate as aiohttp always does
(``ssl=`` per request or on the connector: a local tailnet's ``ssl_context()``). The promises
of :mod:`tsproc.aio` hold: a connection cut by a helper crash fails the request (it never
reads as a clean end), and cancelling a request cancels its dial.

A body that runs to the end of the connection is failed when the connection was cut
(aiohttp alone would end it there), through aiohttp's private ``_payload`` of its response
protocol.

How it plugs in: aiohttp has no public seam for "how to open a connection", so
:class:`TailnetConnector` is a :class:`aiohttp.TCPConnector` with a resolver that resolves
nothing (the name goes to the tailnet as it is) and its ``_wrap_create_connection`` — the one
method that opens sockets, the one aiohttp-socks overrides too — replaced by a tailnet dial.
The extra pins aiohttp's minor versions that method is known to have this shape in.
"""

from __future__ import annotations

import asyncio
import socket
import ssl as ssl_module
from typing import TYPE_CHECKING, Any, final

try:
    import aiohttp
    from aiohttp.abc import AbstractResolver, ResolveResult
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(f"tsproc.aiohttp needs aiohttp: pip install 'tsproc[aiohttp]' ({exc})"
                      ) from exc

from ._util import require_face
from .aio._protocol import create_connection
from .errors import NodeTimeoutError, TsprocError

if TYPE_CHECKING:
    from .aio import Node

__all__ = ["TailnetConnector"]


def _fail_body(protocol: Any, exc: ConnectionResetError) -> None:
    """Fail the body being read before aiohttp's protocol hears of the cut connection.

    aiohttp ends a body that runs to the end of the connection (no Content-Length, not
    chunked) on *any* connection_lost, a reset included: the part that arrived would pass for
    the whole. Its ``_payload`` (the body's reader) raises what it was given first."""
    payload = getattr(protocol, "_payload", None)
    if payload is not None:
        payload.set_exception(aiohttp.ClientPayloadError(
            f"Response payload is not completed: the tailnet connection broke ({exc})"))


@final
class _TailnetResolver(AbstractResolver):
    """Resolves nothing: the tailnet node dials the name itself (MagicDNS, never the system's
    resolver)."""

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [{"hostname": host, "host": host, "port": port, "family": socket.AF_INET,
                 "proto": 0, "flags": 0}]

    async def close(self) -> None:
        pass


@final
class TailnetConnector(aiohttp.TCPConnector):
    """An :class:`aiohttp.TCPConnector` whose connections are tailnet dials from *node* (a
    :class:`tsproc.aio.Node`); keyword arguments go to ``TCPConnector`` (``limit``,
    ``ssl``, ``keepalive_timeout`` …).

    Errors are aiohttp's: a dial that fails is :class:`aiohttp.ClientConnectorError`, one that
    takes longer than ``ClientTimeout.sock_connect`` (or the node's own 30 s) a timeout.

    Raises:
        TypeError: *node* is not a :class:`tsproc.aio.Node`.
    """

    def __init__(self, node: Node, **kwargs: Any) -> None:
        require_face(node, "tsproc.aiohttp.TailnetConnector", ("asyncio",),
                     {"trio": "tsproc.httpx.TailnetTransport (httpx under trio)",
                      "blocking": "tsproc.blocking.requests_adapter"})
        kwargs.setdefault("resolver", _TailnetResolver())
        super().__init__(**kwargs)
        self._tsproc_node = node

    async def _wrap_create_connection(
        self,
        *args: Any,
        addr_infos: list[Any],
        req: Any,
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
        client_error: type[Exception] = aiohttp.ClientConnectorError,
        **kwargs: Any,
    ) -> tuple[asyncio.Transport, Any]:
        # addr_infos holds the URL's host as our resolver gave it back: a name or an IP.
        host, port = addr_infos[0][4][0], addr_infos[0][4][1]
        protocol_factory = args[0]
        ssl = kwargs.get("ssl") or None
        try:
            async with asyncio.timeout(timeout.sock_connect):
                return await create_connection(
                    self._tsproc_node._runtime, host, port, protocol_factory, ssl=ssl,
                    server_hostname=kwargs.get("server_hostname"), on_broken=_fail_body)
        except ssl_module.CertificateError as exc:  # as aiohttp's own method maps them
            raise aiohttp.ClientConnectorCertificateError(req.connection_key, exc) from exc
        except ssl_module.SSLError as exc:
            raise aiohttp.ClientConnectorSSLError(req.connection_key, exc) from exc
        except (TsprocError, OSError) as exc:
            if isinstance(exc, TimeoutError | NodeTimeoutError):
                raise TimeoutError(str(exc)) from exc
            if isinstance(exc, TsprocError):
                exc = OSError(str(exc))
            raise client_error(req.connection_key, exc) from exc
