"""Any asyncio protocol on a tailnet connection: :meth:`Node.create_connection`'s machinery,
for libraries that bring their own protocol (aiohttp's connector).

Private to :mod:`tsproc.aio`.
"""

from __future__ import annotations

import asyncio
import socket
import ssl as ssl_module
from collections.abc import Callable
from typing import Any, TypeVar

from .._faces.bridge import BridgedConn, NodeRuntime
from ._streams import call_in

__all__ = ["EofCheckingProtocol", "create_connection"]

P = TypeVar("P", bound=asyncio.BaseProtocol)


class EofCheckingProtocol(asyncio.Protocol):
    """Passes everything to *inner*, except that an EOF on the socket reaches it only once
    the trio side has confirmed a clean end; a cut connection reaches it as
    ``connection_lost(ConnectionResetError)`` instead. Over TLS, TLS judges the end (see
    ``_TailnetProtocol``), and this only tells the node when the socket closes."""

    def __init__(self, inner: asyncio.Protocol, conn: BridgedConn, runtime: NodeRuntime,
                 loop: asyncio.AbstractEventLoop, *, over_ssl: bool,
                 on_broken: Callable[[Any, ConnectionResetError], None] | None = None) -> None:
        self._inner = inner
        self._on_broken = on_broken
        self._conn = conn
        self._runtime = runtime
        self._loop = loop
        self._over_ssl = over_ssl
        self._transport: asyncio.Transport | None = None
        self._verifier: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._over_ssl:
            return self._inner.eof_received()
        if self._verifier is None:
            self._verifier = self._loop.create_task(self._verify_eof())
        return True  # the transport stays open until the end is confirmed

    async def _verify_eof(self) -> None:
        transport = self._transport
        assert transport is not None
        try:
            with BridgedConn.verifying_eof():
                await call_in(self._runtime, self._conn.verify_eof)
        except ConnectionResetError as exc:
            if self._on_broken is not None:
                self._on_broken(self._inner, exc)
            self._inner.connection_lost(exc)
            self._inner = _Forgotten()
            transport.abort()
            return
        if not self._inner.eof_received():
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._verifier is not None and not self._verifier.done():
            self._verifier.cancel()
            exc = exc or ConnectionAbortedError("the tailnet connection was closed locally")
        self._inner.connection_lost(exc)
        self._conn.close_soon()  # fd B is closed: let fd A and the tailnet connection go

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _Forgotten(asyncio.Protocol):
    """Where the calls go after the inner protocol was told the connection broke."""


async def create_connection(runtime: NodeRuntime, host: str, port: int,
                            protocol_factory: Callable[[], P], *,
                            ssl: ssl_module.SSLContext | None = None,
                            server_hostname: str | None = None,
                            ssl_shutdown_timeout: float | None = None,
                            on_broken: Callable[[Any, ConnectionResetError], None] | None = None,
                            ) -> tuple[asyncio.Transport, P]:
    """Dial *host*:*port* and run ``protocol_factory()`` on the connection in this loop, as
    :meth:`asyncio.loop.create_connection` does (TLS with *ssl*). *on_broken* is called with
    the protocol just before it learns (``connection_lost``) that the connection was cut: for
    a protocol that would take that for an end (see tsproc.aiohttp)."""
    loop = asyncio.get_running_loop()
    conn = await call_in(runtime, lambda: runtime.dial(host, port),
                         dispose=BridgedConn.close_soon)
    try:
        sock = socket.socket(fileno=conn.take_fd())
    except BaseException:
        conn.close_soon()
        raise
    inner: list[P] = []

    def factory() -> EofCheckingProtocol:
        protocol = protocol_factory()
        inner.append(protocol)
        assert isinstance(protocol, asyncio.Protocol)
        return EofCheckingProtocol(protocol, conn, runtime, loop, over_ssl=ssl is not None,
                                   on_broken=on_broken)

    options: dict[str, Any] = {}
    if ssl is not None:
        options = {"ssl": ssl, "server_hostname": server_hostname or host}
        if ssl_shutdown_timeout is not None:
            options["ssl_shutdown_timeout"] = ssl_shutdown_timeout
    try:
        transport, _ = await loop.create_connection(factory, sock=sock, **options)
    except BaseException:
        sock.close()
        conn.close_soon()
        raise
    assert isinstance(transport, asyncio.Transport)
    return transport, inner[0]
