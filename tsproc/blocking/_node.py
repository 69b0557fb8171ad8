"""The blocking node: :class:`Node`, its :class:`EventIterator`, and the local tailnet for
blocking code.

Private to :mod:`tsproc.blocking`, which re-exports the public names.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from types import TracebackType
from typing import Any, TypeVar, final

from .. import (
    Event,
    Forward,
    PingResult,
    Socks5Proxy,
    Status,
    TailnetListener,
    TailnetPacketConn,
    WhoIs,
)
from .. import EventStream as TrioEventStream
from .. import Node as TrioNode
from .._core.capture import CaptureFormat
from .._core.config import DEFAULT_BACKLOG, check_timeout
from .._core.forward import DEFAULT_NODE_WAIT
from .._core.types import IPAddress
from .._faces.bridge import (
    JOIN_TIMEOUT,
    BridgedConn,
    HostedContext,
    NodeRuntime,
    within,
)
from .._faces.packet import BridgedPacketConn
from .._faces.shared import FaceLocalTailnet, NodeFacts
from .._faces.trio_thread import TrioThread
from ..errors import NodeClosedError
from ..testing import local_tailnet as trio_local_tailnet
from ._kept import Kept
from ._listener import Listener
from ._packet import PacketSocket
from ._socket import TailnetSocket, call

__all__ = ["EventIterator", "LocalTailnet", "Node", "local_tailnet"]

T = TypeVar("T")


@final
class Node(NodeFacts):
    """A Tailscale node for blocking code; takes the arguments of :class:`tsproc.Node`.

    ``with tsproc.blocking.Node(...) as node`` starts the node (in a trio thread of its own) and
    waits until it is running; leaving closes every connection, stops the helper (an ephemeral
    node logs out) and ends the thread. Without ``with``: :meth:`start` and :meth:`close`.

    Raises (from ``start``) what :class:`tsproc.Node` raises.
    """

    _tsproc_face = "blocking"  # tsproc._util.require_face

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
        runtime = self._runtime
        conn = self._call(partial(runtime.dial, host, port), timeout,
                          f"no connection to {host}:{port}", dispose=BridgedConn.close_soon)
        return TailnetSocket._adopt(conn, runtime.thread)

    def create_connection(self, address: tuple[str, int], timeout: float | None = None,
                          ) -> TailnetSocket:
        """:func:`socket.create_connection` over the tailnet: ``(host, port)``, and *timeout*
        bounds the dial and then becomes the socket's timeout."""
        sock = self.dial(address[0], address[1], timeout=timeout)
        if timeout is not None:
            sock.settimeout(timeout)
        return sock

    def wait_running(self, *, timeout: float | None = None) -> None:
        """Wait until the node is Running on the tailnet (after an interactive login, say:
        ``Node(..., wait_running=False, up_timeout=None)``, then watch :meth:`events` for an
        :class:`~tsproc.AuthUrlEvent`).

        Raises:
            NodeTimeoutError: not running within *timeout* (None: wait as long as it takes).
            HelperCrashLoop (or the error that failed the node), NodeClosedError.
        """
        self._call(self._runtime.node.wait_running, timeout, "the node was not running")

    def forward(self, host: str, port: int, *,
                unix_dir: str | os.PathLike[str] | None = None, local_port: int | None = None,
                backlog: int = DEFAULT_BACKLOG, node_wait: float = DEFAULT_NODE_WAIT,
                timeout: float | None = None) -> Kept[Forward]:
        """A local endpoint that carries every connection to *host*:*port* on the tailnet,
        for code that opens its own sockets (psycopg, ``psql``, ``curl``), as long as the
        ``with`` lasts (set up within *timeout*); see :meth:`tsproc.Node.forward`::

            with node.forward("db", 5432) as fwd:
                conn = psycopg.connect(host=fwd.host, port=fwd.port, ...)
        """
        return Kept(self._runtime.thread, partial(
            self._runtime.node.forward, host, port, unix_dir=unix_dir, local_port=local_port,
            backlog=backlog, node_wait=node_wait), check_timeout(timeout), "no forward")

    def socks5(self, *, unix_dir: str | os.PathLike[str] | None = None,
               local_port: int | None = None, backlog: int = DEFAULT_BACKLOG,
               node_wait: float = DEFAULT_NODE_WAIT,
               timeout: float | None = None) -> Kept[Socks5Proxy]:
        """A SOCKS5 proxy into the tailnet for as long as the ``with`` lasts (its ``url`` for
        requests with PySocks, ``curl --socks5-hostname`` …); see :meth:`tsproc.Node.socks5`."""
        return Kept(self._runtime.thread, partial(
            self._runtime.node.socks5, unix_dir=unix_dir, local_port=local_port,
            backlog=backlog, node_wait=node_wait), check_timeout(timeout), "no SOCKS5 proxy")

    def listen(self, port: int, *, backlog: int = DEFAULT_BACKLOG) -> Listener:
        """Listen for tailnet connections to *port* (see :class:`Listener`).

        Raises:
            AddressInUseError: this node already listens on that port.
        """
        return self._listen(partial(self._runtime.node.listen, port, backlog=backlog), port)

    def listen_tls(self, port: int, *, backlog: int = DEFAULT_BACKLOG) -> Listener:
        """Listen for TLS connections to *port* with a certificate for this node's MagicDNS
        name (see :meth:`tsproc.Node.listen_tls`): the helper terminates TLS, so the accepted
        sockets carry plaintext.

        Raises:
            TlsUnavailableError: the tailnet issues no certificates to this node.
            AddressInUseError: this node already listens on that port.
        """
        return self._listen(partial(self._runtime.node.listen_tls, port, backlog=backlog), port)

    def listen_funnel(self, port: int, *, funnel_only: bool = False,
                      backlog: int = DEFAULT_BACKLOG) -> Listener:
        """Listen on *port* for connections from the internet through Funnel (and from the
        tailnet, unless *funnel_only*); TLS is terminated in the helper. See
        :meth:`tsproc.Node.listen_funnel`.

        Raises:
            TlsUnavailableError, FunnelUnavailableError.
        """
        return self._listen(partial(self._runtime.node.listen_funnel, port,
                                    funnel_only=funnel_only, backlog=backlog), port)

    def listen_any_port(self, *, backlog: int = DEFAULT_BACKLOG) -> Listener:
        """Accept TCP connections to every port of this node no other listener holds; each
        socket's ``getsockname()`` is the address the peer dialled."""
        return self._listen(partial(self._runtime.node.listen_any_port, backlog=backlog), 0)

    def listen_service(self, service: str, port: int, *, terminate_tls: bool = False,
                       backlog: int = DEFAULT_BACKLOG) -> Listener:
        """Host the Tailscale Service *service* (``"svc:web"``) on *port* (see
        :meth:`tsproc.Node.listen_service`); closing the listener withdraws it.

        Raises:
            UntaggedServiceHostError: this node has no tags.
        """
        return self._listen(partial(self._runtime.node.listen_service, service, port,
                                    terminate_tls=terminate_tls, backlog=backlog), port)

    def _listen(self, open_listener: Callable[[], Awaitable[TailnetListener]],
                port: int) -> Listener:
        runtime = self._runtime
        listener = call(runtime.thread, open_listener, dispose=runtime.close_listener_soon)
        return Listener(runtime, self.hostname, port, listener)

    def listen_packet(self, port: int = 0) -> PacketSocket:
        """A UDP socket on *port* of this node's tailnet IPv4 address (0: any free port).

        Raises:
            AddressInUseError: the port is taken.
        """
        return self._packet(partial(self._runtime.node.listen_packet, port), None)

    def dial_udp(self, host: str, port: int, *, timeout: float | None = None) -> PacketSocket:
        """A UDP socket connected to *host*:*port* on the tailnet (``send``/``recv``).

        Raises:
            DialError: *host* is not on the tailnet.
            NodeTimeoutError: *host* not resolved within *timeout* (None: the node's bound).
        """
        return self._packet(partial(self._runtime.node.dial_udp, host, port), timeout)

    def _packet(self, open_conn: Callable[[], Awaitable[TailnetPacketConn]],
                timeout: float | None) -> PacketSocket:
        thread = self._runtime.thread

        async def bridged() -> BridgedPacketConn:
            return BridgedPacketConn(thread, await open_conn())

        conn = self._call(bridged, timeout, "no UDP socket", dispose=BridgedPacketConn.close)
        return PacketSocket._adopt(conn)

    def whois(self, addr: str | tuple[str, int] | IPAddress, *,
              timeout: float | None = None) -> WhoIs:
        """Who is behind a tailnet address (``sock.remote_addr``, an IP, ``"ip:port"``).

        Raises:
            NotFoundError: no tailnet node has that address.
            NodeTimeoutError: no answer within *timeout*.
        """
        return self._call(partial(self._runtime.node.whois, addr), timeout, "no WhoIs answer")

    def status(self, *, timeout: float | None = None) -> Status:
        """The node's current status: backend state, addresses, peers, helper figures."""
        return self._call(self._runtime.node.status, timeout, "no status")

    def ping(self, peer: str, *, timeout: float | None = None) -> PingResult:
        """Ping *peer* with TSMP through WireGuard (see :meth:`tsproc.Node.ping`; *timeout*
        None: its own 10 s bound)."""
        return self._call(partial(self._runtime.node.ping, peer), timeout,
                          f"no answer from {peer}")

    def cert_domains(self, *, timeout: float | None = None) -> tuple[str, ...]:
        """The DNS names the tailnet issues HTTPS certificates for to this node."""
        return self._call(self._runtime.node.cert_domains, timeout, "no answer")

    def cert_pair(self, domain: str, *, timeout: float | None = None) -> tuple[bytes, bytes]:
        """The PEM certificate chain and private key for *domain* (see
        :meth:`tsproc.Node.cert_pair`); the key is a secret.

        Raises:
            TlsUnavailableError: no certificates for *domain*.
            NodeTimeoutError: none within *timeout* (issuing one can take seconds).
        """
        return self._call(partial(self._runtime.node.cert_pair, domain), timeout,
                          f"no certificate for {domain}")

    def set_exit_node(self, peer: str | None, *, timeout: float | None = None) -> None:
        """Send traffic for addresses outside the tailnet through the exit node *peer*, or
        through none (None); see :meth:`tsproc.Node.set_exit_node`."""
        self._call(partial(self._runtime.node.set_exit_node, peer), timeout,
                   "the exit node was not set")

    def capture_pcap(self, path: str | os.PathLike[str], *, format: CaptureFormat = "ip",
                     timeout: float | None = None) -> Kept[None]:
        """Capture the node's tailnet packets into the pcap file *path* while the ``with``
        block runs; see :meth:`tsproc.Node.capture_pcap`."""
        return Kept(self._runtime.thread, partial(self._runtime.node.capture_pcap, path,
                                                  format=format),
                    check_timeout(timeout), "no capture")

    def logout(self, *, timeout: float | None = None) -> None:
        """Log the node out of the tailnet (its saved identity becomes useless)."""
        self._call(self._runtime.node.logout, timeout, "not logged out")

    def _call(self, fn: Callable[[], Awaitable[T]], timeout: float | None, what: str,
              dispose: Callable[[T], None] | None = None) -> T:
        """*fn* in the node's thread under *timeout* (a trio cancel scope there)."""
        timeout = check_timeout(timeout)
        return call(self._runtime.thread, partial(within, timeout, what, fn), dispose=dispose)

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

    def complete_login(self, auth_url: str) -> None:
        """Complete an interactive login, as a person opening *auth_url* would (see
        :meth:`tsproc.testing.LocalTailnet.complete_login`)."""
        call(self._host.thread, partial(self._tailnet.complete_login, auth_url))


@contextlib.contextmanager
def local_tailnet(**kwargs: Any) -> Iterator[LocalTailnet]:
    """:func:`tsproc.testing.local_tailnet` for blocking code: the control server, DERP and
    STUN on 127.0.0.1 for the ``with`` block (its trio side runs in a thread of its own)."""
    host = HostedContext(trio_local_tailnet(**kwargs), "tsproc local tailnet")
    host.thread.start()
    try:
        tailnet = call(host.thread, host.enter)
        yield LocalTailnet(tailnet, host)
    finally:
        host.request_close()
        host.thread.join(JOIN_TIMEOUT)
