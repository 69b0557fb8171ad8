"""The listener that hands out blocking tailnet sockets.

Private to :mod:`tsproc.blocking`, which re-exports :class:`Listener`.
"""

from __future__ import annotations

import collections
import contextlib
import select
import socket
import threading
import time
from functools import partial
from typing import Any, final

import trio

from .._core.config import check_timeout
from .._faces.bridge import BridgedConn, NodeRuntime
from ..errors import NodeTimeoutError
from ._socket import TailnetSocket

__all__ = ["Listener"]


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
