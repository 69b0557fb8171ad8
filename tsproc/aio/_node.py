"""The asyncio node: :class:`Node`, its :class:`EventStream`, and the local tailnet for
asyncio code.

Private to :mod:`tsproc.aio`, which re-exports the public names.
"""

from __future__ import annotations

import asyncio
import os
import ssl as ssl_module
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
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
from .._core.config import DEFAULT_BACKLOG
from .._core.forward import DEFAULT_NODE_WAIT
from .._core.types import IPAddress
from .._faces.bridge import BridgedConn, HostedContext, NodeRuntime
from .._faces.packet import BridgedPacketConn
from .._faces.shared import FaceLocalTailnet, NodeFacts
from ..errors import NodeClosedError
from ..testing import local_tailnet as trio_local_tailnet
from ._kept import AsyncKept
from ._listener import Listener, PacketConn
from ._protocol import create_connection
from ._streams import (
    DEFAULT_LIMIT,
    TailnetStreamWriter,
    call_in,
    open_streams,
    start_host,
    stop_host,
)

__all__ = ["EventStream", "LocalTailnet", "Node", "local_tailnet"]

P = TypeVar("P", bound=asyncio.BaseProtocol)


@final
class EventStream:
    """An async iterator of the node's events (:meth:`Node.events`); ends when the node
    closes. ``async with node.events() as events: async for event in events: ...``"""

    def __init__(self, runtime: NodeRuntime) -> None:
        self._runtime = runtime
        self._stream: TrioEventStream | None = None
        self._closed = False

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        if self._closed:
            raise StopAsyncIteration
        if self._stream is None:
            self._stream = await call_in(self._runtime, self._subscribe)
        stream = self._stream
        try:
            return await call_in(self._runtime, stream.__anext__)
        except NodeClosedError:
            raise StopAsyncIteration from None

    async def _subscribe(self) -> TrioEventStream:
        return self._runtime.node.events()

    @property
    def dropped(self) -> int:
        """Events dropped because this consumer fell more than 256 behind."""
        return self._stream.dropped if self._stream is not None else 0

    async def aclose(self) -> None:
        self._closed = True
        stream, self._stream = self._stream, None
        if stream is not None:
            with suppress(NodeClosedError):
                await call_in(self._runtime, stream.aclose)

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@final
class Node(NodeFacts):
    """A Tailscale node for asyncio code; takes the arguments of :class:`tsproc.Node`.

    ``async with tsproc.aio.Node(...) as node`` starts the node (in a trio thread of its own) and
    waits until it is running, as the trio node does; leaving closes every connection, stops
    the helper (an ephemeral node logs out) and ends the thread. Methods are coroutines of the
    caller's loop; cancel them with ``asyncio.timeout`` or ``wait_for`` as usual.

    Raises (from ``__aenter__``) what :class:`tsproc.Node` raises.
    """

    _tsproc_face = "asyncio"  # tsproc._util.require_face

    def __init__(self, hostname: str, **kwargs: Any) -> None:
        self._runtime = NodeRuntime(TrioNode(hostname, **kwargs))
        self._entered = False
        self._ended: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<tsproc.aio.Node {self.hostname!r} {self.state.value}>"

    # -- life cycle --

    async def __aenter__(self) -> Node:
        if self._entered:
            raise RuntimeError("a Node can be entered only once; create a new one")
        self._entered = True
        self._ended = await start_host(self._runtime)
        try:
            await call_in(self._runtime, self._runtime.enter)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the node and end its thread. Idempotent; bounded by the node's
        ``restart.shutdown_grace``. Cancelling the wait does not stop the close (it goes on
        in the node's thread)."""
        await stop_host(self._runtime, self._ended)

    # -- using the node --

    async def wait_running(self) -> None:
        """Wait until the node is Running on the tailnet (after an interactive login, say:
        ``Node(..., wait_running=False, up_timeout=None)``, then watch :meth:`events` for an
        :class:`~tsproc.AuthUrlEvent`). Bound it with ``asyncio.timeout``.

        Raises:
            HelperCrashLoop (or the error that failed the node), NodeClosedError.
        """
        await call_in(self._runtime, self._runtime.node.wait_running)

    async def dial(self, host: str, port: int, *, limit: int = DEFAULT_LIMIT,
                   ssl: ssl_module.SSLContext | bool | None = None,
                   server_hostname: str | None = None,
                   ) -> tuple[asyncio.StreamReader, TailnetStreamWriter]:
        """Open a TCP connection to *host*:*port* over the tailnet, as
        :func:`asyncio.open_connection` does: a (reader, writer) pair.

        With *ssl*, TLS runs over it in this loop (verified against *ssl*'s CAs, for
        *server_hostname*, default *host*): ``ssl=tailnet.ssl_context(),
        server_hostname="web.tailnet.test"`` to a :meth:`listen_tls` node; ``ssl=True``
        trusts the system's CAs, as with :func:`asyncio.open_connection`.

        Raises:
            InvalidArgumentError: bad host or port.
            DialError: unknown host, refused, unreachable.
            NodeTimeoutError: the node's own bound on a dial ran out.
            NodeClosedError: the node is closed.
        """
        context = ssl_module.create_default_context() if ssl is True else ssl or None
        runtime = self._runtime
        conn = await call_in(runtime, partial(runtime.dial, host, port),
                             dispose=BridgedConn.close_soon)
        return await open_streams(runtime, conn, limit, ssl=context,
                                  server_hostname=server_hostname or host if context else None)

    async def create_connection(self, protocol_factory: Callable[[], P], host: str, port: int,
                                *, ssl: ssl_module.SSLContext | None = None,
                                server_hostname: str | None = None,
                                ) -> tuple[asyncio.Transport, P]:
        """:meth:`asyncio.loop.create_connection` over the tailnet: the protocol of your
        library on a tailnet connection (with TLS for *ssl*), with tsproc's honest EOF (a cut
        connection reaches the protocol as ``connection_lost(ConnectionResetError)``).

        Raises: what :meth:`dial` raises.
        """
        return await create_connection(self._runtime, host, port, protocol_factory, ssl=ssl,
                                       server_hostname=server_hostname)

    def forward(self, host: str, port: int, *,
                unix_dir: str | os.PathLike[str] | None = None, local_port: int | None = None,
                backlog: int = DEFAULT_BACKLOG, node_wait: float = DEFAULT_NODE_WAIT,
                ) -> AsyncKept[Forward]:
        """A local endpoint that carries every connection to *host*:*port* on the tailnet,
        for code that opens its own sockets (asyncpg, ``psql``, ``curl``), as long as the
        ``async with`` lasts; see :meth:`tsproc.Node.forward`::

            async with node.forward("db", 5432) as fwd:
                conn = await asyncpg.connect(host=fwd.host, port=fwd.port, ...)
        """
        return AsyncKept(self._runtime, partial(
            self._runtime.node.forward, host, port, unix_dir=unix_dir, local_port=local_port,
            backlog=backlog, node_wait=node_wait))

    def socks5(self, *, unix_dir: str | os.PathLike[str] | None = None,
               local_port: int | None = None, backlog: int = DEFAULT_BACKLOG,
               node_wait: float = DEFAULT_NODE_WAIT) -> AsyncKept[Socks5Proxy]:
        """A SOCKS5 proxy into the tailnet for as long as the ``async with`` lasts (its
        ``url`` for httpx, aiohttp-socks …); see :meth:`tsproc.Node.socks5`."""
        return AsyncKept(self._runtime, partial(
            self._runtime.node.socks5, unix_dir=unix_dir, local_port=local_port,
            backlog=backlog, node_wait=node_wait))

    async def listen(self, port: int, *, backlog: int = DEFAULT_BACKLOG) -> Listener:
        """Listen for tailnet TCP connections to *port* (see :class:`Listener`).

        Raises:
            AddressInUseError: this node already listens on that port.
        """
        return await self._listen(partial(self._runtime.node.listen, port, backlog=backlog))

    async def listen_tls(self, port: int, *, backlog: int = DEFAULT_BACKLOG) -> Listener:
        """Listen for TLS connections to *port* with a certificate for this node's MagicDNS
        name (see :meth:`tsproc.Node.listen_tls`): the helper terminates TLS, so the accepted
        streams carry plaintext.

        Raises:
            TlsUnavailableError: the tailnet issues no certificates to this node.
        """
        return await self._listen(partial(self._runtime.node.listen_tls, port, backlog=backlog))

    async def listen_funnel(self, port: int, *, funnel_only: bool = False,
                            backlog: int = DEFAULT_BACKLOG) -> Listener:
        """Listen on *port* for connections from the internet through Funnel (and from the
        tailnet, unless *funnel_only*); TLS is terminated in the helper. See
        :meth:`tsproc.Node.listen_funnel`.

        Raises:
            TlsUnavailableError, FunnelUnavailableError.
        """
        return await self._listen(partial(self._runtime.node.listen_funnel, port,
                                          funnel_only=funnel_only, backlog=backlog))

    async def listen_any_port(self, *, backlog: int = DEFAULT_BACKLOG) -> Listener:
        """Accept TCP connections to every port of this node no other listener holds; each
        writer's ``local_addr`` is the address the peer dialled."""
        return await self._listen(partial(self._runtime.node.listen_any_port, backlog=backlog))

    async def listen_service(self, service: str, port: int, *, terminate_tls: bool = False,
                             backlog: int = DEFAULT_BACKLOG) -> Listener:
        """Host the Tailscale Service *service* (``"svc:web"``) on *port* (see
        :meth:`tsproc.Node.listen_service`); closing the listener withdraws it.

        Raises:
            UntaggedServiceHostError: this node has no tags.
        """
        return await self._listen(partial(self._runtime.node.listen_service, service, port,
                                          terminate_tls=terminate_tls, backlog=backlog))

    async def _listen(self, open_listener: Callable[[], Awaitable[TailnetListener]],
                      ) -> Listener:
        runtime = self._runtime
        listener = await call_in(runtime, open_listener, dispose=runtime.close_listener_soon)
        return Listener(runtime, self.hostname, listener)

    async def listen_packet(self, port: int = 0) -> PacketConn:
        """A UDP socket on *port* of this node's tailnet IPv4 address (0: any free port).

        Raises:
            AddressInUseError: the port is taken.
        """
        return await self._packet(partial(self._runtime.node.listen_packet, port))

    async def dial_udp(self, host: str, port: int) -> PacketConn:
        """A UDP socket connected to *host*:*port* on the tailnet (``send``/``receive``).

        Raises:
            DialError: *host* is not on the tailnet.
        """
        return await self._packet(partial(self._runtime.node.dial_udp, host, port))

    async def _packet(self, open_conn: Callable[[], Awaitable[TailnetPacketConn]],
                      ) -> PacketConn:
        thread = self._runtime.thread

        async def bridged() -> BridgedPacketConn:
            return BridgedPacketConn(thread, await open_conn())

        return PacketConn(await call_in(self._runtime, bridged, dispose=BridgedPacketConn.close))

    async def whois(self, addr: str | tuple[str, int] | IPAddress) -> WhoIs:
        """Who is behind a tailnet address (``writer.remote_addr``, an IP, ``"ip:port"``).

        Raises:
            NotFoundError: no tailnet node has that address.
        """
        return await call_in(self._runtime, partial(self._runtime.node.whois, addr))

    async def status(self) -> Status:
        """The node's current status: backend state, addresses, peers, helper figures."""
        return await call_in(self._runtime, self._runtime.node.status)

    async def ping(self, peer: str) -> PingResult:
        """Ping *peer* with TSMP through WireGuard (see :meth:`tsproc.Node.ping`)."""
        return await call_in(self._runtime, partial(self._runtime.node.ping, peer))

    async def cert_domains(self) -> tuple[str, ...]:
        """The DNS names the tailnet issues HTTPS certificates for to this node."""
        return await call_in(self._runtime, self._runtime.node.cert_domains)

    async def cert_pair(self, domain: str) -> tuple[bytes, bytes]:
        """The PEM certificate chain and private key for *domain* (see
        :meth:`tsproc.Node.cert_pair`); the key is a secret.

        Raises:
            TlsUnavailableError: no certificates for *domain*.
        """
        return await call_in(self._runtime, partial(self._runtime.node.cert_pair, domain))

    async def set_exit_node(self, peer: str | None) -> None:
        """Send traffic for addresses outside the tailnet through the exit node *peer*, or
        through none (None); see :meth:`tsproc.Node.set_exit_node`."""
        await call_in(self._runtime, partial(self._runtime.node.set_exit_node, peer))

    def capture_pcap(self, path: str | os.PathLike[str], *,
                     format: CaptureFormat = "ip") -> AsyncKept[None]:
        """Capture the node's tailnet packets into the pcap file *path* while the ``async
        with`` block runs; see :meth:`tsproc.Node.capture_pcap`."""
        return AsyncKept(self._runtime, partial(self._runtime.node.capture_pcap, path,
                                                format=format))

    async def logout(self) -> None:
        """Log the node out of the tailnet (its saved identity becomes useless)."""
        await call_in(self._runtime, self._runtime.node.logout)

    def events(self) -> EventStream:
        """Subscribe to this node's events (state changes, auth URLs, restarts, crash loop)
        from the first ``__anext__`` on; the iterator ends when the node closes."""
        return EventStream(self._runtime)

    async def _listen_port(self, port: int, backlog: int) -> TailnetListener:
        """The trio listener :func:`serve` accepts from."""
        runtime = self._runtime
        return await call_in(runtime, partial(runtime.node.listen, port, backlog=backlog),
                             dispose=runtime.close_listener_soon)


# -- a local tailnet for asyncio tests and demos --

@final
class LocalTailnet(FaceLocalTailnet):
    """A local tailnet (:func:`local_tailnet`) running in a trio thread of its own: its
    ``control_url``, and with ``https=True`` its ``ca_cert``, ``ssl_context()``,
    ``funnel_address()`` and ``dns_name()``, as :class:`tsproc.testing.LocalTailnet` has them."""

    def node(self, hostname: str, **kwargs: Any) -> Node:
        """A :class:`Node` on this tailnet (ephemeral, with its key; on an ``https`` tailnet
        getting its certificates from the tailnet's ACME server); use it with ``async with``."""
        return Node(hostname, **self._node_kwargs(kwargs))

    async def complete_login(self, auth_url: str) -> None:
        """Complete an interactive login, as a person opening *auth_url* would (see
        :meth:`tsproc.testing.LocalTailnet.complete_login`)."""
        await call_in(self._host, partial(self._tailnet.complete_login, auth_url))


@asynccontextmanager
async def local_tailnet(**kwargs: Any) -> AsyncIterator[LocalTailnet]:
    """:func:`tsproc.testing.local_tailnet` for asyncio: the control server, DERP and STUN on
    127.0.0.1 for the ``async with`` block (its trio side runs in a thread of its own).
    Takes the same arguments."""
    host = HostedContext(trio_local_tailnet(**kwargs), "tsproc local tailnet")
    ended = await start_host(host)
    try:
        yield LocalTailnet(await call_in(host, host.enter), host)
    finally:
        await stop_host(host, ended)
