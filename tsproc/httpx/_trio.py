"""httpcore's network backend on a trio :class:`~tsproc.Node`: each TCP connection a tailnet
dial, as a trio stream (TLS over it with :class:`trio.SSLStream`).

Private to :mod:`tsproc.httpx`, which re-exports :class:`TailnetNetworkBackend`.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Iterable
from typing import Any, Final, final

import httpcore
import trio

from .._core.node import Node
from .._core.streams import TailnetStream
from .._util import require_face
from ._errors import NO_UNIX_SOCKETS, ExceptionMap, dial_errors, map_exceptions

__all__ = ["TailnetNetworkBackend"]

_READ_ERRORS: Final[ExceptionMap] = {
    trio.TooSlowError: httpcore.ReadTimeout,
    trio.BrokenResourceError: httpcore.ReadError,
    trio.ClosedResourceError: httpcore.ReadError,
}
_WRITE_ERRORS: Final[ExceptionMap] = {
    trio.TooSlowError: httpcore.WriteTimeout,
    trio.BrokenResourceError: httpcore.WriteError,
    trio.ClosedResourceError: httpcore.WriteError,
}
_TLS_ERRORS: Final[ExceptionMap] = {
    trio.TooSlowError: httpcore.ConnectTimeout,
    trio.BrokenResourceError: httpcore.ConnectError,
    trio.ClosedResourceError: httpcore.ConnectError,
}


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
        with map_exceptions(_READ_ERRORS), trio.fail_after(_deadline(timeout)):
            data = await self._stream.receive_some(max_bytes)
        return data if isinstance(data, bytes) else bytes(data)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        with map_exceptions(_WRITE_ERRORS), trio.fail_after(_deadline(timeout)):
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
            with map_exceptions(_TLS_ERRORS), trio.fail_after(_deadline(timeout)):
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
        require_face(node, "tsproc.httpx.TailnetNetworkBackend", ("trio",),
                     {"asyncio": "tsproc.httpx.TailnetTransport",
                      "blocking": "tsproc.httpx.TailnetTransport"})
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
        with map_exceptions(dial_errors(trio.TooSlowError)), trio.fail_at(deadline):
            stream = await self._node.dial(host, port)
        return _TailnetNetworkStream(stream, stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError(NO_UNIX_SOCKETS)

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)
