"""The trio side of the asyncio and blocking faces: a node kept entered in its own trio thread,
and connections handed to another world as a duplicate of their fd.

Everything here runs in the node's :class:`~tsproc._faces.trio_thread.TrioThread` and uses only the
public trio API (:class:`~tsproc.Node`, :class:`~tsproc.TailnetStream`,
:class:`~tsproc.TailnetListener`); the faces turn it into asyncio or blocking objects.

**One connection, two fds, one closer each.** A :class:`BridgedConn` keeps the
:class:`~tsproc.TailnetStream` (fd A) here and gives the other world ``os.dup`` of its fd (fd B),
which that world's socket or transport owns and closes. Both name the same socket, so bytes,
``shutdown(SHUT_WR)`` and EOF are shared; the stream here moves no bytes, it keeps the
connection's bookkeeping (the helper's ``conn_end`` word, and ``close_conn`` when the
application lets go). When fd B's owner closes, it tells us (:meth:`BridgedConn.close_soon`)
and fd A closes too, which ends the tailnet connection at once.

Blocking mode is a property of the open file, so fd A follows whatever fd B's owner sets
(asyncio: non-blocking; a blocking socket: blocking). That is harmless: the trio side reads fd A
only once it is at EOF, which never blocks, and never writes to it.

**Honest EOF.** A socketpair reads EOF both when the peer ended cleanly and when the helper
died. When the other world reads EOF on fd B, it asks :meth:`BridgedConn.verify_eof`, which
reads the (equally ended, and empty) stream here: the TailnetStream then waits for the
helper's ``conn_end`` and reports EOF only if that says clean, else raises, which we turn into
:class:`ConnectionResetError`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Final, Generic, TypeVar, final

import trio

from .. import Node, TailnetListener, TailnetStream
from .._core.types import Addr
from ..errors import NodeClosedError, NodeTimeoutError
from .trio_thread import TrioThread

__all__ = ["JOIN_TIMEOUT", "BridgedConn", "HostedContext", "NodeRuntime", "within"]

T = TypeVar("T")

# How long a face waits for the node's thread to end after it closed the node (the close itself
# is bounded by RestartPolicy.shutdown_grace, twice).
JOIN_TIMEOUT: Final = 60.0


async def within(seconds: float | None, what: str, fn: Callable[[], Awaitable[T]]) -> T:
    """``await fn()`` under a deadline of *seconds* (None: none); NodeTimeoutError saying
    *what* did not happen in time. How a face's ``timeout=`` becomes a trio cancel scope."""
    if seconds is None:
        return await fn()
    with trio.move_on_after(seconds):
        return await fn()
    raise NodeTimeoutError(f"{what} within {seconds:g} s")


@final
class BridgedConn:
    """A tailnet connection whose bytes another thread moves through a duplicate fd."""

    def __init__(self, runtime: NodeRuntime, stream: TailnetStream, fd: int) -> None:
        self._runtime = runtime
        self._stream = stream
        self._fd: int | None = fd
        self._lock = threading.Lock()
        self.local_addr: Addr = stream.local_addr
        self.remote_addr: Addr = stream.remote_addr
        self.closed = False

    def __repr__(self) -> str:
        return f"<BridgedConn {self._stream!r}{' closed' if self.closed else ''}>"

    def take_fd(self) -> int:
        """fd B; from now on the caller owns it (closes it, and then calls close_soon)."""
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is None:
            raise NodeClosedError("this connection was closed (its node closed)")
        return fd

    def close(self) -> None:
        """Close the trio side, and fd B if nobody took it (trio thread). Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._runtime.conns.discard(self)
        self._stream.close_now()
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def close_soon(self) -> None:
        """close() from any thread (nothing to do once the node's run is over: it closed
        every connection)."""
        self._runtime.thread.run_sync_soon(self.close)

    async def verify_eof(self) -> None:
        """Called once the other world read EOF on fd B: return if the connection ended
        cleanly, else raise ConnectionResetError (trio thread). The faces call it inside
        :meth:`verifying_eof`, so that this is the one place where a bridged connection's end
        becomes their ConnectionResetError."""
        try:
            data = await self._stream.receive_some(1)
        except trio.BrokenResourceError as exc:
            raise ConnectionResetError(f"tailnet connection broken: {_reason(exc)}") from None
        except trio.ClosedResourceError:
            raise ConnectionResetError("the tailnet connection was closed (its node closed, "
                                       "or the stream was closed) before it ended") from None
        if data:  # pragma: no cover - fd B read EOF, so this socket has nothing left
            raise ConnectionResetError("bytes after the end of a tailnet connection")


    @staticmethod
    @contextlib.contextmanager
    def verifying_eof() -> Iterator[None]:
        """Around a face's call of :meth:`verify_eof` (any thread): a node whose run ended
        before it could answer closed the connection first, which is a reset too."""
        try:
            yield
        except NodeClosedError as exc:
            raise ConnectionResetError(f"tailnet connection broken: {exc}") from None


def _reason(exc: BaseException) -> str:
    return str(exc).removeprefix("tailnet connection broken: ") or type(exc).__name__


class HostedContext(Generic[T]):
    """An async context manager kept entered in a :class:`TrioThread` of its own.

    :meth:`enter` (a call in that thread) enters it and returns what ``__aenter__`` gave;
    :meth:`request_close` makes the host task leave the ``async with``, and then the thread
    ends. The thread has no other job, so its life is the context's.
    """

    def __init__(self, context: AbstractAsyncContextManager[T], name: str) -> None:
        self.thread = TrioThread(name)
        self._context = context
        self._close_requested: trio.Event | None = None
        self._close_early = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} in {self.thread!r}>"

    async def enter(self) -> T:
        nursery = self.thread._nursery
        assert nursery is not None
        value: T = await nursery.start(self._host)
        return value

    async def _host(self, *, task_status: trio.TaskStatus[T]) -> None:
        self._close_requested = trio.Event()
        if self._close_early:
            self._close_requested.set()
        try:
            async with self._context as value:
                task_status.started(value)
                await self._close_requested.wait()
                self.before_exit()
        finally:
            self.after_exit()
            # Once the context is left (or failed to enter), end the run: every call still
            # running gets NodeClosedError.
            self.thread.stop()

    def before_exit(self) -> None:
        """Called in the trio thread just before the context is left."""

    def after_exit(self) -> None:
        """Called in the trio thread once the context is left (or failed to enter)."""

    def request_close(self) -> None:
        """Leave the context and end the thread (from any thread; idempotent)."""

        def close() -> None:
            self._close_early = True
            if self._close_requested is not None:
                self._close_requested.set()
            else:  # never entered (or still entering: then _host sees _close_early)
                self.thread.stop()

        self.thread.run_sync_soon(close)


@final
class NodeRuntime(HostedContext[Node]):
    """A trio :class:`~tsproc.Node` kept entered in its own thread, and its bridged
    connections (all closed when the node closes)."""

    def __init__(self, node: Node) -> None:
        super().__init__(node, f"tsproc node {node.hostname}")
        self.node = node
        self.conns: set[BridgedConn] = set()

    def before_exit(self) -> None:
        for conn in list(self.conns):
            conn.close()

    def after_exit(self) -> None:
        # A dial that finished while the node was closing bridged one more.
        self.before_exit()

    def close_listener_soon(self, listener: TailnetListener) -> None:
        """For a listen whose caller stopped waiting: release the port (from any thread)."""
        self.thread.run_sync_soon(lambda: listener.close_now("nobody took the listener"))

    def bridge(self, stream: TailnetStream) -> BridgedConn:
        """Hand *stream* over: a BridgedConn with a duplicate of its fd (trio thread)."""
        try:
            fd = os.dup(stream.socket_stream.socket.fileno())  # non-inheritable, as dup(2)s here
        except OSError:
            stream.close_now()
            raise
        conn = BridgedConn(self, stream, fd)
        self.conns.add(conn)
        return conn

    async def dial(self, host: str, port: int) -> BridgedConn:
        """node.dial, bridged (trio thread; bounded by the caller's cancel scope, else by the
        node's own bound on a dial)."""
        return self.bridge(await self.node.dial(host, port))

    async def accept(self, listener: TailnetListener) -> BridgedConn:
        """The next connection of *listener*, bridged (trio thread)."""
        return self.bridge(await listener.accept())
