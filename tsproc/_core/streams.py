"""Trio streams and listeners over the file descriptors the helper passes.

A :class:`TailnetStream` is a :class:`trio.SocketStream` over one end of a per-connection
socketpair. The only thing it adds to the socket is honesty about endings: a socketpair reads EOF
both when the tailnet peer closed cleanly and when the helper died, so on EOF the stream waits for
the helper's ``conn_end`` word on the control channel (sent *before* the EOF, so it is never
late) and raises :class:`trio.BrokenResourceError` unless that word says the end was clean.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

import trio

from .._util import NoPublicConstructor
from ..errors import ProtocolError
from .types import Addr

if TYPE_CHECKING:
    from .types import WhoIs

__all__ = ["ConnState", "TailnetListener", "TailnetStream", "adopt_socket", "split_addr"]

# Bigger socketpair buffers than the kernel default (about 200 KiB) let bulk transfers move in
# larger steps; the kernel caps them at net.core.{r,w}mem_max.
_SOCKET_BUFFER: Final = 1 << 20
# How long aclose() waits for the helper to release a listener's port.
_RELEASE_TIMEOUT: Final = 5.0
# On Linux the helper tells a closed socketpair end from a half-closed one by itself (POLLHUP
# with the EOF), so a stream closed without a half-close before needs no close_conn
# (docs/protocol.md §6).
_HELPER_SEES_CLOSE: Final = sys.platform == "linux"
_MSG_NOSIGNAL: Final[int] = getattr(socket, "MSG_NOSIGNAL", 0)


class ConnState:
    """How one connection ended, as far as the helper that bridged it knows.

    ``clean`` is None until the helper's ``conn_end`` arrives, then True (the tailnet peer
    closed in order) or False (reset, or the helper died).
    """

    __slots__ = ("clean", "conn_id", "ended", "four_tuple", "generation", "reason")

    def __init__(self, conn_id: int, generation: int) -> None:
        self.conn_id = conn_id
        self.generation = generation
        # "LOCAL REMOTE" as the helper gave them: what reset_peers names after the helper died.
        self.four_tuple = ""
        self.clean: bool | None = None
        self.reason = ""
        self.ended = trio.Event()

    def finish(self, clean: bool, reason: str = "") -> None:
        if not self.ended.is_set():
            self.clean = clean
            self.reason = reason
            self.ended.set()


_T = TypeVar("_T")


def adopt_socket(fd: int, kind: socket.SocketKind | None) -> socket.socket:
    """The socket behind an fd the helper passed; it owns the fd from now on.

    Raises:
        ProtocolError: the fd is not a socket (of *kind*, if given); it has been closed.
    """
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        os.close(fd)
        raise ProtocolError(f"the helper passed an fd that is not a socket: {exc}") from None
    if kind is not None and sock.type != kind:
        sock.close()
        raise ProtocolError(f"the helper passed a {sock.type.name} socket, not {kind.name}")
    return sock


def split_addr(text: object) -> Addr:
    """'100.64.0.1:80' or '[fd7a::1]:80' → (host, port); anything else → (str, 0)."""
    if not isinstance(text, str):
        return ("", 0)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return (text, 0)
    return (host.strip("[]"), int(port))


@final
class TailnetStream(trio.abc.HalfCloseableStream, metaclass=NoPublicConstructor):
    """A TCP connection on the tailnet, as a trio half-closeable stream.

    Attributes:
        local_addr: this node's (ip, port) the peer connected to: for a connection to a subnet
            route this node advertises (:meth:`Node.listen_any_port`), the original destination.
        remote_addr: the peer's tailnet (ip, port); pass it to :meth:`Node.whois`. For a
            connection that came through Funnel, the public client's (ip, port), which no
            tailnet identity belongs to.
        via_funnel: the connection came from the internet through Funnel
            (:meth:`Node.listen_funnel`), not from a tailnet peer.
        socket_stream: the underlying :class:`trio.SocketStream` (an AF_UNIX socket).

    Raises :class:`trio.BrokenResourceError` from ``receive_some``/``send_all`` when the
    connection was reset or the helper died, and never reports such an ending as a clean EOF.
    """

    def __init__(
        self,
        fd: int,
        state: ConnState,
        local_addr: object,
        remote_addr: object,
        on_close: Callable[[ConnState, int | None, bool], None] | None = None,
        *,
        via_funnel: bool = False,
        whois: Callable[[Addr], Awaitable[WhoIs]] | None = None,
    ) -> None:
        sock = adopt_socket(fd, socket.SOCK_STREAM)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
        self.socket_stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self._sock = sock  # the same socket, for the synchronous check in _close_locally
        self.local_addr = split_addr(local_addr)
        self.remote_addr = split_addr(remote_addr)
        self.via_funnel = via_funnel
        self._state = state
        self._on_close = on_close
        self._whois = whois
        self._receiving = False
        self._eof_verified = False
        self._closed = False

    @property
    def conn_id(self) -> int:
        """The helper's id for this connection (unique per helper process)."""
        return self._state.conn_id

    async def whois(self) -> WhoIs:
        """Who is on the other end: the peer node and its user, as the tailnet says
        (``node.whois(stream.remote_addr)`` of the stream's node).

        Raises:
            NotFoundError: the peer is no longer on the tailnet.
        """
        if self._whois is None:  # pragma: no cover - every stream a node makes has it
            raise RuntimeError("this stream does not belong to a node")
        return await self._whois(self.remote_addr)

    def __repr__(self) -> str:
        local = f"{self.local_addr[0]}:{self.local_addr[1]}"
        remote = f"{self.remote_addr[0]}:{self.remote_addr[1]}"
        return f"<TailnetStream conn={self.conn_id} {local} <-> {remote}>"

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.socket_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.socket_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.socket_stream.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        self._receiving = True
        try:
            data = await self.socket_stream.receive_some(max_bytes)
            if data or self._eof_verified:
                return data
            await self._verify_eof()
            return data
        finally:
            self._receiving = False

    async def _verify_eof(self) -> None:
        # The helper writes conn_end before it shuts its end down, so by the time we read EOF
        # the word is at most a control-channel read away; a dead helper sets it (unclean) too.
        await self._state.ended.wait()
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed while receiving")
        if not self._state.clean:
            reason = self._state.reason or "the connection was reset"
            raise trio.BrokenResourceError(f"tailnet connection broken: {reason}")
        self._eof_verified = True

    async def aclose(self) -> None:
        self._close_locally()
        await self.socket_stream.aclose()

    async def reset(self) -> None:
        """Close abortively: the tailnet peer reads a connection reset (``ECONNRESET``; a
        tsproc peer, :class:`trio.BrokenResourceError`), not the EOF of :meth:`aclose`.

        Use it when the peer must not take what it got for complete: a proxy whose backend
        refused or broke, a handler that failed half-way through a reply. Bytes sent and not
        yet delivered are discarded, as a TCP reset discards them. Idempotent, and a no-op
        after :meth:`aclose`.
        """
        self.reset_now()
        await trio.lowlevel.checkpoint()

    def close_now(self) -> None:
        """Close without a checkpoint (for cleanup paths that cannot await)."""
        self._close_locally()
        self.socket_stream.socket.close()

    def _helper_sees_close(self) -> bool:
        """Whether the close about to happen reaches the helper as a close, not as the EOF of
        a half-close: only where it polls for it, and only if the socket was not shut down for
        writing before (by send_eof, or through a duplicate of its fd, as the faces make). A
        zero-length send tells: it fails with EPIPE on such a socket and moves nothing (no
        wake-up of the helper) on any other."""
        if not _HELPER_SEES_CLOSE:
            return False
        try:
            self._sock.send(b"", _MSG_NOSIGNAL)
        except OSError:
            return False  # half-closed (EPIPE), or a state we cannot read: say it in words
        return True

    def reset_now(self) -> None:
        """:meth:`reset` without a checkpoint (for cleanup paths that cannot await)."""
        self._close_locally(reset=True)
        self.socket_stream.socket.close()

    def _close_locally(self, *, reset: bool = False) -> None:
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            held = None
            if reset:
                # The node keeps a duplicate of our end open until the helper has reset the
                # tailnet side (its conn_reset): were the helper to read EOF here first, it
                # would half-close the tailnet connection, and the peer would read EOF.
                with contextlib.suppress(OSError):
                    held = os.dup(self.socket_stream.socket.fileno())
            on_close(self._state, held, not reset and self._helper_sees_close())
        self._closed = True
        # A task may have read EOF and be waiting in _verify_eof for a conn_end that will now
        # never be delivered (on_close made the node forget this conn): wake it, and it raises
        # ClosedResourceError, as trio streams do for a receive that another task closed under.
        self._state.finish(False, "the stream was closed")


@final
class TailnetListener(trio.abc.Listener[TailnetStream], metaclass=NoPublicConstructor):
    """Accepts tailnet connections to one port of a :class:`~tsproc.Node`.

    Use it with :func:`trio.serve_listeners`, or call :meth:`accept` yourself. At most
    ``backlog`` connections wait here for ``accept()``; the helper holds back the rest, and tsnet
    refuses what it cannot queue. It survives helper restarts: a task waiting in ``accept()``
    keeps waiting and then gets connections from the new helper.
    """

    def __init__(
        self,
        port: int,
        backlog: int,
        on_accept: Callable[[TailnetListener, TailnetStream], None],
        on_close: Callable[[TailnetListener, trio.Event | None], None],
        spec: tuple[str, dict[str, Any]] = ("listen", {}),
    ) -> None:
        self.port = port
        """The port it listens on; 0 for an any-port listener."""
        self.backlog = backlog
        # The request that opens it: sent again to each new helper after a restart.
        self.spec = spec
        self._queue: deque[TailnetStream] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._on_accept = on_accept
        self._on_close = on_close
        self._closed = False
        self._closed_reason = ""

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._queue)} waiting"
        kind = self.spec[0].removeprefix("listen").strip("_") or "tcp"
        port = self.port or "*"
        return f"<TailnetListener {kind} port={port} backlog={self.backlog} {state}>"

    @property
    def closed(self) -> bool:
        return self._closed

    async def accept(self) -> TailnetStream:
        """Wait for the next connection.

        Raises:
            trio.ClosedResourceError: the listener was closed (also while waiting).
        """
        # The checkpoint comes first, and nothing yields between a look at the queue and the
        # return: other tasks run only while this one parks, so a queue seen non-empty is
        # popped and its stream returned at once. (Yielding between the look and the pop let
        # a helper's death, which drops that helper's queued connections, empty the queue
        # under a listener that stayed open, and accept raised ClosedResourceError for it;
        # yielding after the pop leaves a taken stream in neither the queue nor the caller.)
        await trio.lowlevel.checkpoint()
        while not self._queue:
            if self._closed:
                raise trio.ClosedResourceError(self._closed_reason or "listener is closed")
            await self._lot.park()
        if self._closed:
            raise trio.ClosedResourceError(self._closed_reason or "listener is closed")
        stream = self._queue.popleft()
        self._on_accept(self, stream)
        return stream

    async def aclose(self) -> None:
        """Stop listening; a blocked ``accept()`` raises ClosedResourceError. Idempotent.

        Returns once the helper has released the port, so it can be listened on again."""
        released = trio.Event()
        if self._close_locally("listener was closed"):
            self._on_close(self, released)
            with trio.move_on_after(_RELEASE_TIMEOUT):
                await released.wait()
        await trio.lowlevel.checkpoint()

    # -- used by the node --

    def push(self, stream: TailnetStream) -> None:
        if self._closed:
            stream.reset_now()
            return
        self._queue.append(stream)
        self._lot.unpark()

    def drop_generation(self, generation: int) -> None:
        """Close queued connections that came through a helper that has died."""
        keep = deque(s for s in self._queue if s._state.generation != generation)
        for stream in self._queue:
            if stream._state.generation == generation:
                stream.close_now()
        self._queue = keep

    def close_now(self, reason: str) -> None:
        """Close without waiting for the helper (it is told, but not waited for)."""
        if self._close_locally(reason):
            self._on_close(self, None)

    def _close_locally(self, reason: str) -> bool:
        if self._closed:
            return False
        self._closed = True
        self._closed_reason = reason
        # Nobody will accept these: their peers read a reset, not an EOF that looks like an
        # empty reply.
        while self._queue:
            self._queue.popleft().reset_now()
        self._lot.unpark_all()
        return True

    @property
    def waiting(self) -> int:
        return len(self._queue)

