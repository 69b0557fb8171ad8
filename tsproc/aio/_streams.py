"""asyncio streams on bridged tailnet connections, and running calls in the node's trio thread.

Private to :mod:`tsproc.aio`, which re-exports :class:`TailnetStreamWriter`.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, Final, TypeVar

import outcome

from .._faces.bridge import BridgedConn, HostedContext, NodeRuntime

T = TypeVar("T")

DEFAULT_LIMIT: Final = 2**16  # asyncio.streams' default buffer limit


async def call_in(runtime: HostedContext[Any], fn: Callable[[], Awaitable[T]],
                   dispose: Callable[[T], None] | None = None) -> T:
    """Run *fn* in the node's trio thread and wait for it without blocking the loop.

    Cancelling the wait cancels *fn*; a value it still produces goes to *dispose*."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[outcome.Outcome[T]] = loop.create_future()

    def resolve(result: outcome.Outcome[T]) -> None:  # in the loop
        if future.cancelled():
            _dispose(result, dispose)
        else:
            future.set_result(result)

    def on_done(result: outcome.Outcome[T]) -> None:  # in the trio thread
        try:
            loop.call_soon_threadsafe(resolve, result)
        except RuntimeError:  # the loop is closed: nobody will take it
            _dispose(result, dispose)

    call = runtime.thread.submit(fn, on_done)
    try:
        result = await future
    except asyncio.CancelledError:
        if not call.abandon(dispose) and future.done() and not future.cancelled():
            # Delivered, but this task was cancelled before it could take it.
            _dispose(future.result(), dispose)
        raise
    return result.unwrap()


async def start_host(host: HostedContext[Any]) -> asyncio.Future[None]:
    """Start *host*'s thread; the future it returns is done once the thread has ended."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def thread_ended() -> None:  # in the thread, as its last act
        with suppress(RuntimeError):  # the loop is gone: nobody waits
            loop.call_soon_threadsafe(_set_done, ended)

    host.thread.on_exit(thread_ended)
    host.thread.start()
    return ended


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def stop_host(host: HostedContext[Any], ended: asyncio.Future[None] | None) -> None:
    """Leave *host*'s context and wait (without blocking the loop) until its thread ended."""
    host.request_close()
    if ended is not None:
        await asyncio.shield(ended)
    host.thread.join()  # it has run its last line: this returns at once


def _dispose(result: outcome.Outcome[T], dispose: Callable[[T], None] | None) -> None:
    if dispose is not None and isinstance(result, outcome.Value):
        dispose(result.value)


class TailnetStreamWriter(asyncio.StreamWriter):
    """The :class:`asyncio.StreamWriter` of a tailnet connection.

    ``get_extra_info("peername")`` and ``("sockname")`` are the tailnet addresses (the socket
    underneath is a socketpair with none); pass :attr:`remote_addr` to :meth:`Node.whois`.
    ``write_eof()`` half-closes: the peer reads EOF and may still send.
    """

    def __init__(self, transport: asyncio.WriteTransport, protocol: _TailnetProtocol,
                 reader: asyncio.StreamReader, loop: asyncio.AbstractEventLoop,
                 conn: BridgedConn) -> None:
        super().__init__(transport, protocol, reader, loop)
        self.local_addr = conn.local_addr
        """This node's tailnet (ip, port)."""
        self.remote_addr = conn.remote_addr
        """The peer's tailnet (ip, port)."""

    def __repr__(self) -> str:
        local = f"{self.local_addr[0]}:{self.local_addr[1]}"
        remote = f"{self.remote_addr[0]}:{self.remote_addr[1]}"
        return f"<TailnetStreamWriter {local} <-> {remote}>"

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.remote_addr
        if name == "sockname":
            return self.local_addr
        return super().get_extra_info(name, default)


class _TailnetProtocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol, with tsproc's honest EOF: an EOF on the socket reaches the
    reader only once the trio side has confirmed the connection ended cleanly."""

    def __init__(self, reader: asyncio.StreamReader, conn: BridgedConn, runtime: NodeRuntime,
                 loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(reader, loop=loop)
        self._tsproc_reader = reader  # the base class keeps only a weak reference
        self._tsproc_loop = loop
        self._conn = conn
        self._runtime = runtime
        self._eof_state = "open"  # → "verifying" → "clean" | "broken"
        self._verifier: asyncio.Task[None] | None = None

    def eof_received(self) -> bool:
        if self._eof_state == "open":
            self._eof_state = "verifying"
            self._verifier = self._tsproc_loop.create_task(self._verify_eof())
        return True  # keep the transport open: our side may go on writing (half-close)

    async def _verify_eof(self) -> None:
        try:
            with BridgedConn.verifying_eof():
                await call_in(self._runtime, self._conn.verify_eof)
        except ConnectionResetError as exc:
            self._eof_state = "broken"
            self._tsproc_reader.set_exception(exc)
        else:
            self._eof_state = "clean"
            self._tsproc_reader.feed_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None and self._eof_state not in ("clean", "broken"):
            # Closed here (writer.close(), abort) before the peer's end was confirmed: a later
            # read must not look like the peer's clean EOF.
            self._tsproc_reader.set_exception(ConnectionAbortedError(
                "the tailnet stream was closed locally"))
        super().connection_lost(exc)
        if self._verifier is not None and not self._verifier.done():
            self._verifier.cancel()
        self._conn.close_soon()  # fd B is closed: let fd A and the tailnet connection go


async def open_streams(runtime: NodeRuntime, conn: BridgedConn, limit: int,
                        writer_class: type[TailnetStreamWriter] = TailnetStreamWriter,
                        ) -> tuple[asyncio.StreamReader, TailnetStreamWriter]:
    """asyncio streams on a bridged connection; the transport owns fd B from here on."""
    loop = asyncio.get_running_loop()
    try:
        sock = socket.socket(fileno=conn.take_fd())
    except BaseException:
        conn.close_soon()
        raise
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = _TailnetProtocol(reader, conn, runtime, loop)
    try:
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock)
    except BaseException:
        sock.close()
        conn.close_soon()
        raise
    return reader, writer_class(transport, protocol, reader, loop, conn)
