"""The node for blocking code: plain :class:`socket.socket` objects on tailnet connections.

    import tsproc.blocking

    with tsproc.blocking.Node("client", auth_key=key) as node:
        sock = node.dial("web", 80, timeout=10)
        sock.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
        print(sock.recv(65536))
        sock.close()

For HTTP, :func:`requests_adapter` lets :mod:`requests` (and :func:`pool_manager` urllib3) reach
tailnet hosts; :class:`TailnetServer` serves like :mod:`socketserver` (``http.server`` handlers
included). The node itself is tsproc's trio :class:`~tsproc.Node`, running in a thread of its
own; each connection is a real kernel socket (a duplicate of the fd the helper passed), so
reads and writes are ordinary system calls in the caller's thread. What stays true:

- A connection cut by a helper crash raises :class:`ConnectionResetError` from ``recv``; it
  never reads as a clean EOF (``recv`` returns ``b""`` only once the helper has confirmed the
  peer ended in order).
- Ctrl-C interrupts any blocking call (``dial``, ``accept``, ``recv``, ``serve_forever``) with
  :class:`KeyboardInterrupt`; the trio side of the call is cancelled, nothing is leaked, and
  leaving the ``with`` block stops the helper.
- Closing the node closes its connections, stops the helper and ends the node's thread. No
  loopback TCP port is opened for any of it.

Timeouts are ``timeout=`` arguments, as in :func:`socket.create_connection`; they raise
:class:`~tsproc.NodeTimeoutError`, a :class:`TimeoutError`.
"""

from __future__ import annotations

import collections
import contextlib
import select
import socket
import socketserver
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from types import TracebackType
from typing import Any, Final, TypeVar, final

import outcome
import trio

from . import Event, NodeState, PingResult, Status, WhoIs, testing
from . import EventStream as TrioEventStream
from . import Node as TrioNode
from ._bridge import (
    JOIN_TIMEOUT,
    BridgedConn,
    HostedContext,
    IPAddress,
    NodeRuntime,
    check_timeout,
    within,
)
from ._trio_thread import TrioThread
from .errors import InvalidArgumentError, NodeClosedError, NodeTimeoutError, TsprocError
from .testing import local_tailnet as trio_local_tailnet

__all__ = [
    "EventIterator",
    "Listener",
    "LocalTailnet",
    "Node",
    "TailnetServer",
    "TailnetSocket",
    "ThreadingTailnetServer",
    "local_tailnet",
    "pool_manager",
    "requests_adapter",
]

T = TypeVar("T")

_DEFAULT_BACKLOG: Final = 128


def _call(thread: TrioThread, fn: Callable[[], Awaitable[T]],
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
        try:
            _call(thread, conn.verify_eof)
        except NodeClosedError as exc:
            raise ConnectionResetError(f"tailnet connection broken: {exc}") from None
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

    def __init__(self, node: Node, port: int, listener: Any) -> None:
        self._node = node
        self.port = port
        """The tailnet port."""
        self._runtime = node._runtime
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
        return f"<tsproc.blocking.Listener {self._node.hostname}:{self.port} {state}>"

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


@final
class Node:
    """A Tailscale node for blocking code; takes the arguments of :class:`tsproc.Node`.

    ``with tsproc.blocking.Node(...) as node`` starts the node (in a trio thread of its own) and
    waits until it is running; leaving closes every connection, stops the helper (an ephemeral
    node logs out) and ends the thread. Without ``with``: :meth:`start` and :meth:`close`.

    Raises (from ``start``) what :class:`tsproc.Node` raises.
    """

    def __init__(self, hostname: str, **kwargs: Any) -> None:
        self._runtime = NodeRuntime(TrioNode(hostname, **kwargs))
        self._started = False

    def __repr__(self) -> str:
        return f"<tsproc.blocking.Node {self.hostname!r} {self.state.value}>"

    @property
    def hostname(self) -> str:
        return self._runtime.node.hostname

    @property
    def state(self) -> NodeState:
        return self._runtime.node.state

    @property
    def tailscale_ips(self) -> tuple[IPAddress, ...]:
        return self._runtime.node.tailscale_ips

    @property
    def helper_pid(self) -> int | None:
        return self._runtime.node.helper_pid

    # -- life cycle --

    def start(self) -> Node:
        """Start the node; returns once it is running (within its ``up_timeout``)."""
        if self._started:
            raise RuntimeError("a Node can be started only once; create a new one")
        self._started = True
        self._runtime.thread.start()
        try:
            _call(self._runtime.thread, self._runtime.enter)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Close the node and end its thread. Idempotent; bounded by the node's
        ``restart.shutdown_grace``."""
        self._runtime.request_close()
        self._runtime.thread.join(JOIN_TIMEOUT)

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- using the node --

    def dial(self, host: str, port: int, *, timeout: float | None = None) -> TailnetSocket:
        """Open a TCP connection to *host*:*port* over the tailnet: a connected socket.

        Raises:
            InvalidArgumentError: bad host, port or timeout.
            DialError: unknown host, refused, unreachable.
            NodeTimeoutError: not connected within *timeout* (None: the node's own bound).
        """
        timeout = check_timeout(timeout)
        runtime = self._runtime
        dial = partial(within, timeout, f"no connection to {host}:{port}",
                       partial(runtime.dial, host, port))
        conn = _call(runtime.thread, dial,
                     dispose=BridgedConn.close_soon)
        return TailnetSocket._adopt(conn, runtime.thread)

    def create_connection(self, address: tuple[str, int], timeout: float | None = None,
                          ) -> TailnetSocket:
        """:func:`socket.create_connection` over the tailnet: ``(host, port)``, and *timeout*
        bounds the dial and then becomes the socket's timeout."""
        sock = self.dial(address[0], address[1], timeout=timeout)
        if timeout is not None:
            sock.settimeout(timeout)
        return sock

    def listen(self, port: int, *, backlog: int = _DEFAULT_BACKLOG) -> Listener:
        """Listen for tailnet connections to *port* (see :class:`Listener`).

        Raises:
            AddressInUseError: this node already listens on that port.
        """
        runtime = self._runtime
        listener = _call(runtime.thread, partial(runtime.node.listen, port, backlog=backlog),
                         dispose=runtime.close_listener_soon)
        return Listener(self, port, listener)

    def whois(self, addr: str | tuple[str, int] | IPAddress) -> WhoIs:
        """Who is behind a tailnet address (``sock.remote_addr``, an IP, ``"ip:port"``).

        Raises:
            NotFoundError: no tailnet node has that address.
        """
        return _call(self._runtime.thread, partial(self._runtime.node.whois, addr))

    def status(self) -> Status:
        """The node's current status: backend state, addresses, peers, helper figures."""
        return _call(self._runtime.thread, self._runtime.node.status)

    def ping(self, peer: str) -> PingResult:
        """Ping *peer* with TSMP through WireGuard (see :meth:`tsproc.Node.ping`)."""
        return _call(self._runtime.thread, partial(self._runtime.node.ping, peer))

    def events(self) -> EventIterator:
        """This node's events (state changes, auth URLs, restarts, crash loop) from now on;
        the iterator ends when the node closes. ``with node.events() as events: for ...``"""
        stream = _call(self._runtime.thread, self._subscribe)
        return EventIterator(self._runtime.thread, stream)

    async def _subscribe(self) -> TrioEventStream:
        return self._runtime.node.events()


@final
class EventIterator:
    """A node's events for a ``for`` loop (:meth:`Node.events`)."""

    def __init__(self, thread: TrioThread, stream: TrioEventStream) -> None:
        self._thread = thread
        self._stream = stream

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        try:
            return _call(self._thread, self._stream.__anext__)
        except (StopAsyncIteration, NodeClosedError):
            raise StopIteration from None

    @property
    def dropped(self) -> int:
        """Events dropped because this consumer fell more than 256 behind."""
        return self._stream.dropped

    def close(self) -> None:
        with contextlib.suppress(NodeClosedError):
            _call(self._thread, self._stream.aclose)

    def __enter__(self) -> EventIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- socketserver --

class TailnetServer(socketserver.BaseServer):
    """A :mod:`socketserver` server on a tailnet port: give it any ``BaseRequestHandler``
    (``StreamRequestHandler``, ``http.server.BaseHTTPRequestHandler`` …)::

        with tsproc.blocking.TailnetServer(node, 80, Handler) as server:
            server.serve_forever()

    ``self.request`` is a :class:`TailnetSocket`, ``self.client_address`` the caller's tailnet
    (ip, port) and ``self.server.node`` the node (for ``node.whois(self.client_address)``).
    Requests are handled one at a time; :class:`ThreadingTailnetServer` handles each in a thread.
    """

    def __init__(self, node: Node, port: int,
                 RequestHandlerClass: Callable[[Any, Any, TailnetServer],
                                               socketserver.BaseRequestHandler],
                 *, backlog: int = _DEFAULT_BACKLOG) -> None:
        self.node = node
        self.listener = node.listen(port, backlog=backlog)
        super().__init__((node.hostname, port), RequestHandlerClass)

    def fileno(self) -> int:
        return self.listener.fileno()

    def get_request(self) -> tuple[TailnetSocket, tuple[str, int]]:
        # serve_forever calls this when fileno() is readable; a spurious wake-up raises
        # TimeoutError (an OSError), which socketserver ignores.
        return self.listener.accept(timeout=0)

    def server_close(self) -> None:
        self.listener.close()

    def shutdown_request(self, request: Any) -> None:
        with contextlib.suppress(OSError):
            request.shutdown(socket.SHUT_WR)  # the handler is done: the peer reads EOF
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        request.close()


class ThreadingTailnetServer(socketserver.ThreadingMixIn, TailnetServer):
    """:class:`TailnetServer` that handles each connection in a thread of its own (joined
    when the server closes)."""


# -- requests and urllib3 --

def pool_manager(node: Node, **kwargs: Any) -> Any:
    """A :class:`urllib3.PoolManager` whose ``http://`` connections go through *node*: the URL's
    host is a tailnet name or IP. Keyword arguments go to the PoolManager.

    A failed dial raises urllib3's ``NewConnectionError`` (``ConnectTimeoutError`` for a
    timeout), as a failed TCP connect does, so retries and ``requests`` work as usual.
    ``https://`` is refused: the tailnet already encrypts and authenticates every byte.
    """
    # urllib3 and requests are the caller's, not tsproc's, dependencies.
    import urllib3  # noqa: PLC0415
    from urllib3.connection import HTTPConnection  # noqa: PLC0415
    from urllib3.connectionpool import HTTPConnectionPool  # noqa: PLC0415
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError  # noqa: PLC0415

    class TailnetHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            timeout = _timeout(self.timeout)
            try:
                sock = node.dial(self._dns_host, self.port or 80, timeout=timeout)
            except NodeTimeoutError as exc:
                raise ConnectTimeoutError(
                    self, f"tailnet connection to {self.host} timed out: {exc}") from exc
            except TsprocError as exc:
                raise NewConnectionError(
                    self, f"Failed to establish a tailnet connection: {exc}") from exc
            sock.settimeout(timeout)
            return sock

    class TailnetHTTPConnectionPool(HTTPConnectionPool):
        ConnectionCls = TailnetHTTPConnection

    class RefusedHTTPSPool(HTTPConnectionPool):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise InvalidArgumentError(
                "tsproc's urllib3/requests adapter serves http:// URLs: the tailnet encrypts "
                "and authenticates the connection already")

    manager = urllib3.PoolManager(**kwargs)
    manager.pool_classes_by_scheme = {"http": TailnetHTTPConnectionPool,
                                      "https": RefusedHTTPSPool}
    return manager


def _timeout(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None  # urllib3's "default" sentinel, or no timeout
    return float(value)


def requests_adapter(node: Node, **kwargs: Any) -> Any:
    """A :mod:`requests` transport adapter that sends ``http://`` requests through *node*::

        session = requests.Session()
        session.mount("http://", tsproc.blocking.requests_adapter(node))
        session.get("http://web/").text

    Keyword arguments go to ``requests.adapters.HTTPAdapter`` (``max_retries``,
    ``pool_maxsize`` …). Needs ``pip install requests``.
    """
    from requests.adapters import HTTPAdapter  # noqa: PLC0415 - the caller's dependency

    class TailnetAdapter(HTTPAdapter):
        def init_poolmanager(self, connections: int, maxsize: int, block: bool = False,
                             **pool_kwargs: Any) -> None:
            self.poolmanager = pool_manager(node, num_pools=connections, maxsize=maxsize,
                                            block=block, **pool_kwargs)

    return TailnetAdapter(**kwargs)


# -- a local tailnet for blocking tests and demos --

@final
class LocalTailnet:
    """A local tailnet (:func:`local_tailnet`) running in a trio thread of its own."""

    def __init__(self, tailnet: testing.LocalTailnet) -> None:
        self._tailnet = tailnet
        self.control_url = tailnet.control_url
        """Give it to a node as ``control_url``."""

    def __repr__(self) -> str:
        return f"<tsproc.blocking.LocalTailnet {self.control_url}>"

    def node(self, hostname: str, **kwargs: Any) -> Node:
        """A :class:`Node` on this tailnet (ephemeral, with its key); use it with ``with``."""
        kwargs.setdefault("control_url", self.control_url)
        kwargs.setdefault("ephemeral", True)
        if self._tailnet.auth_key is not None:
            kwargs.setdefault("auth_key", self._tailnet.auth_key)
        return Node(hostname, **kwargs)


@contextlib.contextmanager
def local_tailnet(**kwargs: Any) -> Iterator[LocalTailnet]:
    """:func:`tsproc.testing.local_tailnet` for blocking code: the control server, DERP and
    STUN on 127.0.0.1 for the ``with`` block (its trio side runs in a thread of its own)."""
    host = HostedContext(trio_local_tailnet(**kwargs), "tsproc local tailnet")
    host.thread.start()
    try:
        tailnet = _call(host.thread, host.enter)
        yield LocalTailnet(tailnet)
    finally:
        host.request_close()
        host.thread.join(JOIN_TIMEOUT)
