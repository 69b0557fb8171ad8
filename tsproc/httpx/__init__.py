"""httpx over the tailnet (``pip install 'tsproc[httpx]'``), from any face of the node.

    import httpx
    import tsproc.httpx

    async with httpx.AsyncClient(transport=tsproc.httpx.TailnetTransport(node)) as client:
        response = await client.get("http://web/")        # MagicDNS name of a tailnet node

*node* is a :class:`tsproc.Node` (under trio) or a :class:`tsproc.aio.Node` (under asyncio),
with ``httpx.AsyncClient``; or a :class:`tsproc.blocking.Node` with ``httpx.Client``. Every
connection is a dial of that node: URLs name tailnet nodes (short or full MagicDNS names, or
100.x / fd7a: addresses), never hosts on the local network or the internet. Connections are
pooled and kept alive by httpcore exactly as with httpx's own transport; ``https://`` runs TLS
over the tailnet connection (HTTP/2 by ALPN with ``http2=True``).

How it plugs in: httpcore's connection pool takes a *network backend* (``connect_tcp`` → a
stream with ``read``/``write``/``start_tls``); tsproc has one per face (``_trio``,
``_asyncio``, ``_sync``), each dialling over the tailnet. httpx 0.28 has no public way to hand
its own transport a backend, so :class:`TailnetTransport` is a small httpx transport over
``httpcore.[Async]ConnectionPool(network_backend=…)`` — only public API of both libraries.

Under trio, the stream of a response knows the tailnet connection it came over:
``response.extensions["network_stream"].get_extra_info("tailnet_stream")`` is the
:class:`~tsproc.TailnetStream` (pass its ``remote_addr`` to :meth:`~tsproc.Node.whois`);
under every face, ``get_extra_info("server_addr")`` is the server's tailnet address.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any, Final, final

try:
    import httpcore
    import httpx
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(f"tsproc.httpx needs httpx: pip install 'tsproc[httpx]' ({exc})") from exc

from .._util import FACES, require_face
from ._asyncio import AsyncioNetworkBackend
from ._errors import HTTPX_ERRORS, map_exceptions
from ._sync import SyncNetworkBackend
from ._trio import TailnetNetworkBackend

__all__ = ["TailnetNetworkBackend", "TailnetTransport"]


@final
class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterator[bytes] | Any) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with map_exceptions(HTTPX_ERRORS):
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            with map_exceptions(HTTPX_ERRORS):
                await aclose()


@final
class _SyncResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: Iterator[bytes] | Any) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with map_exceptions(HTTPX_ERRORS):
            yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            with map_exceptions(HTTPX_ERRORS):
                close()


_DEFAULT_LIMITS: Final = httpx.Limits(max_connections=100, max_keepalive_connections=20)


@final
class TailnetTransport(httpx.AsyncBaseTransport, httpx.BaseTransport):
    """An httpx transport whose requests go over the tailnet, from *node*.

    ``httpx.AsyncClient(transport=TailnetTransport(node))`` (a trio or an asyncio node) or
    ``httpx.Client(transport=TailnetTransport(node))`` (a blocking node) then requests
    ``http://<tailnet name>/…``. Connections are kept alive and reused (up to
    ``limits.max_keepalive_connections`` idle ones, for ``limits.keepalive_expiry`` seconds).

    Args:
        node: the node to dial from (it must be entered): :class:`tsproc.Node`,
            :class:`tsproc.aio.Node` or :class:`tsproc.blocking.Node`.
        verify: for ``https://``: True (system/certifi CAs), False, or an ``ssl.SSLContext``
            (a local tailnet's ``ssl_context()``).
        http1, http2: the HTTP versions to offer (HTTP/2 needs ``httpx[http2]``).
        limits: connection pool limits, as for httpx's own transport.
        retries: how many times to retry a failed dial.

    Errors are httpx's: a tailnet dial that fails is :class:`httpx.ConnectError`, one that
    times out :class:`httpx.ConnectTimeout`.

    Raises:
        TypeError: *node* is not a tsproc node; or, on the first request, a blocking node
            used from ``httpx.AsyncClient`` or an async one from ``httpx.Client``.
    """

    def __init__(
        self,
        node: Any,
        *,
        verify: ssl.SSLContext | bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = _DEFAULT_LIMITS,
        retries: int = 0,
    ) -> None:
        self._face = require_face(node, "tsproc.httpx.TailnetTransport",
                                  ("trio", "asyncio", "blocking"))
        self.node = node
        ssl_context = verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(
            verify=verify
        )
        options: dict[str, Any] = {
            "ssl_context": ssl_context,
            "max_connections": limits.max_connections,
            "max_keepalive_connections": limits.max_keepalive_connections,
            "keepalive_expiry": limits.keepalive_expiry,
            "http1": http1,
            "http2": http2,
            "retries": retries,
        }
        self._pool: httpcore.AsyncConnectionPool | None = None
        self._sync_pool: httpcore.ConnectionPool | None = None
        if self._face == "blocking":
            self._sync_pool = httpcore.ConnectionPool(
                network_backend=SyncNetworkBackend(node), **options)
        elif self._face == "asyncio":
            self._pool = httpcore.AsyncConnectionPool(
                network_backend=AsyncioNetworkBackend(node), **options)
        else:
            self._pool = httpcore.AsyncConnectionPool(
                network_backend=TailnetNetworkBackend(node), **options)

    def __repr__(self) -> str:
        return f"<tsproc.httpx.TailnetTransport node={self.node.hostname!r} ({self._face})>"

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._pool is None or not isinstance(request.stream, httpx.AsyncByteStream):
            raise TypeError("a TailnetTransport of a tsproc.blocking.Node is for httpx.Client; "
                            "httpx.AsyncClient needs a tsproc.Node (trio) or tsproc.aio.Node")
        with map_exceptions(HTTPX_ERRORS):
            response = await self._pool.handle_async_request(_core_request(request))
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._sync_pool is None or not isinstance(request.stream, httpx.SyncByteStream):
            raise TypeError(f"a TailnetTransport of a {FACES[self._face]} is for "
                            "httpx.AsyncClient; httpx.Client needs a tsproc.blocking.Node")
        with map_exceptions(HTTPX_ERRORS):
            response = self._sync_pool.handle_request(_core_request(request))
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_SyncResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        """Close every pooled connection."""
        if self._pool is not None:
            await self._pool.aclose()

    def close(self) -> None:
        """Close every pooled connection (a blocking node's transport)."""
        if self._sync_pool is not None:
            self._sync_pool.close()

    async def __aenter__(self) -> TailnetTransport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()

    def __enter__(self) -> TailnetTransport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        self.close()


def _core_request(request: httpx.Request) -> httpcore.Request:
    return httpcore.Request(
        method=request.method,
        url=httpcore.URL(
            scheme=request.url.raw_scheme,
            host=request.url.raw_host,
            port=request.url.port,
            target=request.url.raw_path,
        ),
        headers=request.headers.raw,
        content=request.stream,
        extensions=request.extensions,
    )
