"""httpcore's network backend on a :class:`tsproc.aio.Node`, for httpx under asyncio: each TCP
connection a tailnet dial as asyncio streams (with tsproc's honest EOF), TLS over it with
:meth:`asyncio.StreamWriter.start_tls`.

Private to :mod:`tsproc.httpx`.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, final

import httpcore

from ._errors import (
    NO_UNIX_SOCKETS,
    OS_READ_ERRORS,
    OS_TLS_ERRORS,
    OS_WRITE_ERRORS,
    dial_errors,
    map_exceptions,
)

if TYPE_CHECKING:
    from ..aio import Node, TailnetStreamWriter

__all__ = ["AsyncioNetworkBackend"]

@final
class _AsyncioNetworkStream(httpcore.AsyncNetworkStream):
    """httpcore's view of one tailnet connection as asyncio streams (plain, or TLS)."""

    def __init__(self, reader: asyncio.StreamReader, writer: TailnetStreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        with map_exceptions(OS_READ_ERRORS):
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        with map_exceptions(OS_WRITE_ERRORS):
            async with asyncio.timeout(timeout):
                self._writer.write(buffer)
                await self._writer.drain()

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):  # already broken: it is closed all the same
            await self._writer.wait_closed()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
    ) -> httpcore.AsyncNetworkStream:
        try:
            with map_exceptions(OS_TLS_ERRORS):
                async with asyncio.timeout(timeout):
                    await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except BaseException:
            self._writer.transport.abort()
            raise
        return self

    def get_extra_info(self, info: str) -> Any:
        writer = self._writer
        if info == "client_addr":
            return writer.local_addr
        if info == "server_addr":
            return writer.remote_addr
        if info == "ssl_object":
            return writer.get_extra_info("ssl_object")
        if info == "socket":
            return writer.get_extra_info("socket")
        if info == "is_readable":
            # Asked of an idle keep-alive connection: readable (the server closed it, or sent
            # junk) means it must not be reused.
            sock = writer.get_extra_info("socket")
            if writer.transport.is_closing() or self._reader.at_eof() or sock is None:
                return True
            return bool(select.select([sock.fileno()], [], [], 0)[0])
        return None


@final
class AsyncioNetworkBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend whose TCP connections are tailnet dials from an asyncio
    *node*."""

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
        with map_exceptions(dial_errors(TimeoutError)):
            async with asyncio.timeout(timeout):
                reader, writer = await self._node.dial(host, port)
        return _AsyncioNetworkStream(reader, writer)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError(NO_UNIX_SOCKETS)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
