"""The blocking node: :class:`Node`, its :class:`EventIterator`, and the local tailnet for
blocking code.

Private to :mod:`tsproc.blocking`, which re-exports the public names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from types import TracebackType
from typing import Any, final

from .. import Event, PingResult, Status, TailnetListener, WhoIs
from .. import EventStream as TrioEventStream
from .. import Node as TrioNode
from .._core.config import DEFAULT_BACKLOG, check_timeout
from .._core.types import IPAddress
from .._faces.bridge import (
    JOIN_TIMEOUT,
    BridgedConn,
    HostedContext,
    NodeRuntime,
    within,
)
from .._faces.shared import FaceLocalTailnet, NodeFacts
from .._faces.trio_thread import TrioThread
from ..errors import NodeClosedError
from ..testing import local_tailnet as trio_local_tailnet
from ._socket import Listener, TailnetSocket, call

__all__ = ["EventIterator", "LocalTailnet", "Node", "local_tailnet"]


@final
class Node(NodeFacts):
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

    # -- life cycle --

    def start(self) -> Node:
        """Start the node; returns once it is running (within its ``up_timeout``)."""
        if self._started:
            raise RuntimeError("a Node can be started only once; create a new one")
        self._started = True
        self._runtime.thread.start()
        try:
            call(self._runtime.thread, self._runtime.enter)
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
        conn = call(runtime.thread, dial,
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

    def listen(self, port: int, *, backlog: int = DEFAULT_BACKLOG) -> Listener:
        """Listen for tailnet connections to *port* (see :class:`Listener`).

        Raises:
            AddressInUseError: this node already listens on that port.
        """
        return self._listen(self._runtime.node.listen, port, backlog)

    def listen_tls(self, port: int, *, backlog: int = DEFAULT_BACKLOG) -> Listener:
        """Listen for TLS connections to *port* with a certificate for this node's MagicDNS
        name (see :meth:`tsproc.Node.listen_tls`): the helper terminates TLS, so the accepted
        sockets carry plaintext.

        Raises:
            TlsUnavailableError: the tailnet issues no certificates to this node.
            AddressInUseError: this node already listens on that port.
        """
        return self._listen(self._runtime.node.listen_tls, port, backlog)

    def _listen(self, open_listener: Callable[..., Awaitable[TailnetListener]], port: int,
                backlog: int) -> Listener:
        runtime = self._runtime
        listener = call(runtime.thread, partial(open_listener, port, backlog=backlog),
                         dispose=runtime.close_listener_soon)
        return Listener(runtime, self.hostname, port, listener)

    def whois(self, addr: str | tuple[str, int] | IPAddress) -> WhoIs:
        """Who is behind a tailnet address (``sock.remote_addr``, an IP, ``"ip:port"``).

        Raises:
            NotFoundError: no tailnet node has that address.
        """
        return call(self._runtime.thread, partial(self._runtime.node.whois, addr))

    def status(self) -> Status:
        """The node's current status: backend state, addresses, peers, helper figures."""
        return call(self._runtime.thread, self._runtime.node.status)

    def ping(self, peer: str) -> PingResult:
        """Ping *peer* with TSMP through WireGuard (see :meth:`tsproc.Node.ping`)."""
        return call(self._runtime.thread, partial(self._runtime.node.ping, peer))

    def events(self) -> EventIterator:
        """This node's events (state changes, auth URLs, restarts, crash loop) from now on;
        the iterator ends when the node closes. ``with node.events() as events: for ...``"""
        stream = call(self._runtime.thread, self._subscribe)
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
            return call(self._thread, self._stream.__anext__)
        except (StopAsyncIteration, NodeClosedError):
            raise StopIteration from None

    @property
    def dropped(self) -> int:
        """Events dropped because this consumer fell more than 256 behind."""
        return self._stream.dropped

    def close(self) -> None:
        with contextlib.suppress(NodeClosedError):
            call(self._thread, self._stream.aclose)

    def __enter__(self) -> EventIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

# -- a local tailnet for blocking tests and demos --

@final
class LocalTailnet(FaceLocalTailnet):
    """A local tailnet (:func:`local_tailnet`) running in a trio thread of its own: its
    ``control_url``, and with ``https=True`` its ``ca_cert``, ``ssl_context()``,
    ``funnel_address()`` and ``dns_name()``, as :class:`tsproc.testing.LocalTailnet` has them."""

    def node(self, hostname: str, **kwargs: Any) -> Node:
        """A :class:`Node` on this tailnet (ephemeral, with its key; on an ``https`` tailnet
        getting its certificates from the tailnet's ACME server); use it with ``with``."""
        return Node(hostname, **self._node_kwargs(kwargs))


@contextlib.contextmanager
def local_tailnet(**kwargs: Any) -> Iterator[LocalTailnet]:
    """:func:`tsproc.testing.local_tailnet` for blocking code: the control server, DERP and
    STUN on 127.0.0.1 for the ``with`` block (its trio side runs in a thread of its own)."""
    host = HostedContext(trio_local_tailnet(**kwargs), "tsproc local tailnet")
    host.thread.start()
    try:
        tailnet = call(host.thread, host.enter)
        yield LocalTailnet(tailnet)
    finally:
        host.request_close()
        host.thread.join(JOIN_TIMEOUT)
