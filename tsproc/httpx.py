"""httpx over the tailnet (``pip install 'tsproc[httpx]'``).

    import httpx
    import tsproc.httpx

    async with httpx.AsyncClient(transport=tsproc.httpx.TailnetTransport(node)) as client:
        response = await client.get("http://web/")        # MagicDNS name of a tailnet node

Every connection is a :meth:`tsproc.Node.dial`: URLs name tailnet nodes (short or full MagicDNS
names, or 100.x / fd7a: addresses), never hosts on the local network or the internet. Connections
are pooled and kept alive by httpcore exactly as with httpx's own transport; ``https://`` runs TLS
over the tailnet connection.

How it plugs in: httpcore's connection pool takes a *network backend* (``connect_tcp`` → a
stream with ``read``/``write``); :class:`TailnetNetworkBackend` is one whose ``connect_tcp`` dials
over the tailnet. httpx 0.28 has no public way to hand its own transport a backend, so
:class:`TailnetTransport` is a small :class:`httpx.AsyncBaseTransport` over
``httpcore.AsyncConnectionPool(network_backend=…)`` — only public API of both libraries.

The stream of a response knows the tailnet connection it came over:
``response.extensions["network_stream"].get_extra_info("tailnet_stream")`` is the
:class:`~tsproc.TailnetStream` (pass its ``remote_addr`` to :meth:`~tsproc.Node.whois`).
"""

from __future__ import annotations

import contextlib
import math
import ssl
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Final, final

import trio

try:
    import httpcore
    import httpx
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(f"tsproc.httpx needs httpx: pip install 'tsproc[httpx]' ({exc})") from exc

from ._core.node import Node
from ._core.streams import TailnetStream
from .errors import NodeTimeoutError, TsprocError

__all__ = ["TailnetNetworkBackend", "TailnetTransport"]

_ExceptionMap = Mapping[type[BaseException], type[Exception]]

_READ_ERRORS: Final[_ExceptionMap] = {
    trio.TooSlowError: httpcore.ReadTimeout,
    trio.BrokenResourceError: httpcore.ReadError,
    trio.ClosedResourceError: httpcore.ReadError,
}
_WRITE_ERRORS: Final[_ExceptionMap] = {
    trio.TooSlowError: httpcore.WriteTimeout,
    trio.BrokenResourceError: httpcore.WriteError,
    trio.ClosedResourceError: httpcore.WriteError,
}
_TLS_ERRORS: Final[_ExceptionMap] = {
    trio.TooSlowError: httpcore.ConnectTimeout,
    trio.BrokenResourceError: httpcore.ConnectError,
    trio.ClosedResourceError: httpcore.ConnectError,
}


@contextlib.contextmanager
def _map_exceptions(mapping: _ExceptionMap) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for from_exc, to_exc in mapping.items():
            if isinstance(exc, from_exc):
                raise to_exc(str(exc)) from exc
        raise


def _deadline(timeout: float | None) -> float:
    return math.inf if timeout is None else timeout


@final
class _TailnetNetworkStream(httpcore.AsyncNetworkStream):
    """httpcore's view of one tailnet connection (plain, or TLS over it)."""

    def __init__(self, stream: trio.abc.Stream, tailnet_stream: TailnetStream) -> None:
        self._stream = stream
        self._tailnet_stream = tailnet_stream

    # httpcore's interface passes timeouts as arguments (ASYNC109 is about our own API).
    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        with _map_exceptions(_READ_ERRORS), trio.fail_after(_deadline(timeout)):
            data = await self._stream.receive_some(max_bytes)
        return data if isinstance(data, bytes) else bytes(data)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        with _map_exceptions(_WRITE_ERRORS), trio.fail_after(_deadline(timeout)):
            await self._stream.send_all(buffer)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
    ) -> httpcore.AsyncNetworkStream:
        tls = trio.SSLStream(self._stream, ssl_context, server_hostname=server_hostname,
                             https_compatible=True)
        try:
            with _map_exceptions(_TLS_ERRORS), trio.fail_after(_deadline(timeout)):
                await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(self._stream)
            raise
        return _TailnetNetworkStream(tls, self._tailnet_stream)

    def get_extra_info(self, info: str) -> Any:
        if info == "tailnet_stream":
            return self._tailnet_stream
        if info == "client_addr":
            return self._tailnet_stream.local_addr
        if info == "server_addr":
            return self._tailnet_stream.remote_addr
        if info == "ssl_object" and isinstance(self._stream, trio.SSLStream):
            # trio's SSLStream forwards the ssl.SSLObject's methods (selected_alpn_protocol,
            # version, getpeercert …), which is all httpcore and its users ask of it.
            return self._stream
        if info == "is_readable":
            # The pool asks this of an idle keep-alive connection: readable means the server
            # closed it (or sent junk), so it must not be reused.
            return self._tailnet_stream.socket_stream.socket.is_readable()
        return None


@final
class TailnetNetworkBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend whose TCP connections are tailnet dials from *node*.

    Use it with httpcore directly (``httpcore.AsyncConnectionPool(network_backend=…)``);
    with httpx, use :class:`TailnetTransport`.
    """

    def __init__(self, node: Node) -> None:
        self._node = node

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        # local_address and socket_options are about host sockets; a tailnet dial has neither.
        # timeout=None is httpcore's "no timeout": the dial then has its own bound (30 s).
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        try:
            with trio.fail_at(deadline):
                stream = await self._node.dial(host, port)
        except (NodeTimeoutError, trio.TooSlowError) as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except TsprocError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        return _TailnetNetworkStream(stream, stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("a tailnet transport does not connect to unix sockets")

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)


# httpcore's exceptions → httpx's, most specific first (what httpx's own transport does).
_HTTPX_ERRORS: Final[_ExceptionMap] = {
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.ProxyError: httpx.ProxyError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
    httpcore.ProtocolError: httpx.ProtocolError,
}


@final
class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterator[bytes] | Any) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _map_exceptions(_HTTPX_ERRORS):
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            with _map_exceptions(_HTTPX_ERRORS):
                await aclose()


_DEFAULT_LIMITS: Final = httpx.Limits(max_connections=100, max_keepalive_connections=20)


@final
class TailnetTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose requests go over the tailnet, from *node*.

    ``httpx.AsyncClient(transport=TailnetTransport(node))`` then requests
    ``http://<tailnet name>/…``. Connections are kept alive and reused (up to
    ``limits.max_keepalive_connections`` idle ones, for ``limits.keepalive_expiry`` seconds).

    Args:
        node: the :class:`~tsproc.Node` to dial from (it must be entered).
        verify: for ``https://``: True (system/certifi CAs), False, or an ``ssl.SSLContext``.
        http1, http2: the HTTP versions to offer (HTTP/2 needs ``httpx[http2]``).
        limits: connection pool limits, as for httpx's own transport.
        retries: how many times to retry a failed dial.

    Errors are httpx's: a tailnet dial that fails is :class:`httpx.ConnectError`, one that
    times out :class:`httpx.ConnectTimeout`.
    """

    def __init__(
        self,
        node: Node,
        *,
        verify: ssl.SSLContext | bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = _DEFAULT_LIMITS,
        retries: int = 0,
    ) -> None:
        self.node = node
        ssl_context = verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(
            verify=verify
        )
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=http1,
            http2=http2,
            retries=retries,
            network_backend=TailnetNetworkBackend(node),
        )

    def __repr__(self) -> str:
        return f"<tsproc.httpx.TailnetTransport node={self.node.hostname!r}>"

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(request.stream, httpx.AsyncByteStream):
            raise TypeError("TailnetTransport is an async transport: use httpx.AsyncClient")
        core_request = httpcore.Request(
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
        with _map_exceptions(_HTTPX_ERRORS):
            response = await self._pool.handle_async_request(core_request)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._pool.aclose()

    async def __aenter__(self) -> TailnetTransport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()
