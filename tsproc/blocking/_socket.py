"""Blocking sockets on bridged tailnet connections, the listener that hands them out, and
calls into the node's trio thread that Ctrl-C interrupts.

Private to :mod:`tsproc.blocking`, which re-exports :class:`TailnetSocket` and :class:`Listener`.
"""

from __future__ import annotations

import collections
import contextlib
import select
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar, final

import outcome
import trio

from .._core.config import check_timeout
from .._faces.bridge import BridgedConn, NodeRuntime
from .._faces.trio_thread import TrioThread
from ..errors import NodeTimeoutError

T = TypeVar("T")

def call(thread: TrioThread, fn: Callable[[], Awaitable[T]],
          dispose: Callable[[T], None] | None = None) -> T:
    """Run *fn* in the trio thread and wait for it. Interruptible: on KeyboardInterrupt (or any
    exception while waiting) *fn* is cancelled, and a value it still produces is disposed of."""
    done = threading.Event()
    box: list[outcome.Outcome[T]] = []

    def on_done(result: outcome.Outcome[T]) -> None:
        box.append(result)
        done.set()

    call = thread.submit(fn, on_done)
    try:
        done.wait()  # a lock wait: signals interrupt it (POSIX), so Ctrl-C works here
    except BaseException:
        if not call.abandon(dispose) and box:
            result = box[0]
            if dispose is not None and isinstance(result, outcome.Value):
                dispose(result.value)
        raise
    return box[0].unwrap()


class TailnetSocket(socket.socket):
    """A :class:`socket.socket` carrying one tailnet TCP connection.

    Use it as any connected stream socket (``sendall``, ``recv``, ``makefile``, ``settimeout``,
    ``shutdown(SHUT_WR)`` to half-close). Differences from a plain one: ``recv`` returns ``b""``
    only for a clean end and raises :class:`ConnectionResetError` when the connection was cut;
    ``getpeername()``/``getsockname()`` give the tailnet addresses (the kernel socket is a
    socketpair with none); it cannot be ``dup()``-ed or ``detach()``-ed (the node must see its
    close to end the tailnet connection).
    """

    _tsproc_conn: BridgedConn | None = None
    _tsproc_thread: TrioThread | None = None
    _tsproc_eof_checked = False

    @classmethod
    def _adopt(cls, conn: BridgedConn, thread: TrioThread) -> TailnetSocket:
        try:
            sock = cls(fileno=conn.take_fd())
        except BaseException:
            conn.close_soon()
            raise
        sock._tsproc_conn = conn
        sock._tsproc_thread = thread
        sock.setblocking(True)
        return sock

    def __repr__(self) -> str:
        conn = self._tsproc_conn
        if conn is None or self.fileno() < 0:
            return "<tsproc.blocking.TailnetSocket [closed]>"
        local, remote = conn.local_addr, conn.remote_addr
        return (f"<tsproc.blocking.TailnetSocket fd={self.fileno()} "
                f"{local[0]}:{local[1]} <-> {remote[0]}:{remote[1]}>")

    @property
    def local_addr(self) -> tuple[str, int]:
        """This node's tailnet (ip, port)."""
        return self._tsproc_conn.local_addr if self._tsproc_conn else ("", 0)

    @property
    def remote_addr(self) -> tuple[str, int]:
        """The peer's tailnet (ip, port); pass it to :meth:`Node.whois`."""
        return self._tsproc_conn.remote_addr if self._tsproc_conn else ("", 0)

    def getpeername(self) -> tuple[str, int]:
        return self.remote_addr

    def getsockname(self) -> tuple[str, int]:
        return self.local_addr

    # -- honest EOF: every receive path checks an empty read with the node --

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        if not data and bufsize > 0:
            self._check_eof()
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        n = super().recv_into(buffer, nbytes, flags)
        if n == 0 and (nbytes or len(memoryview(buffer))) > 0:
            self._check_eof()
        return n

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, Any]:
        data = self.recv(bufsize, flags)
        return data, self.remote_addr

    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> tuple[int, Any]:
        return self.recv_into(buffer, nbytes, flags), self.remote_addr

    def recvmsg(self, bufsize: int, ancbufsize: int = 0, flags: int = 0) -> Any:
        data, ancdata, msg_flags, address = super().recvmsg(bufsize, ancbufsize, flags)
        if not data and bufsize > 0:
            self._check_eof()
        return data, ancdata, msg_flags, address

    def recvmsg_into(self, buffers: Any, ancbufsize: int = 0, flags: int = 0) -> Any:
        result = super().recvmsg_into(buffers, ancbufsize, flags)
        if result[0] == 0 and sum(len(memoryview(b)) for b in buffers) > 0:
            self._check_eof()
        return result

    def _check_eof(self) -> None:
        if self._tsproc_eof_checked:
            return
        conn, thread = self._tsproc_conn, self._tsproc_thread
        if conn is None or thread is None:
            raise ConnectionResetError("the tailnet connection is closed")
        with BridgedConn.verifying_eof():
            call(thread, conn.verify_eof)
        self._tsproc_eof_checked = True

    # -- closing: the node learns when the last user of the fd lets go --

    def _real_close(self, _ss: Any = socket.socket) -> None:
        # socket.close() and the last makefile() closing both end here (http.client closes the
        # socket while its response still reads through makefile: the connection must live
        # until then).
        try:
            super()._real_close()  # type: ignore[misc]
        finally:
            conn, self._tsproc_conn = self._tsproc_conn, None
            if conn is not None:
                conn.close_soon()

    def dup(self) -> TailnetSocket:
        raise OSError("a tailnet socket cannot be duplicated (its node must see it close)")

    def detach(self) -> int:
        raise OSError("a tailnet socket cannot be detached (its node must see it close)")


@final
class Listener:
    """Accepts tailnet connections to one port (:meth:`Node.listen`), like a listening socket:
    ``accept()`` → ``(TailnetSocket, (ip, port))``, ``fileno()`` for ``select``/``selectors``
    (readable when a connection may be waiting), ``close()``, and ``with``.
    """

    def __init__(self, runtime: NodeRuntime, hostname: str, port: int, listener: Any) -> None:
        self._hostname = hostname
        self.port = port
        """The tailnet port."""
        self._runtime = runtime
        self._ready: collections.deque[BridgedConn] = collections.deque()
        self._lock = threading.Lock()
        self._closed = False
        # Readiness without a port: the trio side writes a byte to this socketpair for each
        # connection it hands over (one at a time, so the listener's backlog keeps working).
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopped = threading.Event()
        self._credit: trio.Semaphore | None = None
        self._accepting = self._runtime.thread.submit(
            partial(self._accept_loop, listener), lambda _: self._stopped.set())

    def __repr__(self) -> str:
        state = "closed" if self._closed else "listening"
        return f"<tsproc.blocking.Listener {self._hostname}:{self.port} {state}>"

    async def _accept_loop(self, listener: Any) -> None:  # trio thread
        self._credit = trio.Semaphore(1)
        try:
            while True:
                await self._credit.acquire()
                try:
                    conn = await self._runtime.accept(listener)
                except trio.ClosedResourceError:
                    return
                with self._lock:
                    if self._closed:
                        conn.close()
                        return
                    self._ready.append(conn)
                    with contextlib.suppress(OSError):
                        self._wake_w.send(b"\0")
        finally:
            with self._lock:
                ready, self._ready = list(self._ready), collections.deque()
            for conn in ready:
                conn.close()
            with trio.CancelScope(shield=True):
                await listener.aclose()

    def fileno(self) -> int:
        return self._wake_r.fileno()

    def accept(self, timeout: float | None = None) -> tuple[TailnetSocket, tuple[str, int]]:
        """Wait for the next connection: ``(socket, peer's tailnet (ip, port))``.

        Raises:
            NodeTimeoutError: none within *timeout* seconds (0: only one already waiting).
            OSError: the listener is closed.
        """
        if timeout != 0:
            timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if self._closed:
                    raise OSError("the listener is closed")
                conn = self._ready.popleft() if self._ready else None
            if conn is not None:
                break
            if self._stopped.is_set():
                raise OSError("the listener is closed (its node closed)")
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([self._wake_r], [], [], remaining)
            if not readable and deadline is not None and time.monotonic() >= deadline:
                raise NodeTimeoutError(f"no connection to port {self.port} within {timeout} s")
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)
        self._runtime.thread.run_sync_soon(self._release_credit)
        sock = TailnetSocket._adopt(conn, self._runtime.thread)
        return sock, conn.remote_addr

    def _release_credit(self) -> None:
        if self._credit is not None:
            self._credit.release()

    def close(self) -> None:
        """Stop listening and release the port (waits for it, a few seconds at most).
        Connections not yet accepted are closed. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wake_w.close()
        self._accepting.cancel()
        self._stopped.wait(10)
        self._wake_r.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
