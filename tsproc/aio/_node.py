"""The asyncio node: :class:`Node`, its :class:`EventStream`, and the local tailnet for
asyncio code.

Private to :mod:`tsproc.aio`, which re-exports the public names.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from functools import partial
from types import TracebackType
from typing import Any, final

from .. import Event, PingResult, Status, TailnetListener, WhoIs
from .. import EventStream as TrioEventStream
from .. import Node as TrioNode
from .._core.types import IPAddress
from .._faces.bridge import BridgedConn, HostedContext, NodeRuntime
from .._faces.shared import FaceLocalTailnet, NodeFacts
from ..errors import NodeClosedError
from ..testing import local_tailnet as trio_local_tailnet
from ._streams import (
    DEFAULT_LIMIT,
    TailnetStreamWriter,
    call_in,
    open_streams,
    start_host,
    stop_host,
)

__all__ = ["EventStream", "LocalTailnet", "Node", "local_tailnet"]


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

    async def dial(self, host: str, port: int, *, limit: int = DEFAULT_LIMIT,
                   ) -> tuple[asyncio.StreamReader, TailnetStreamWriter]:
        """Open a TCP connection to *host*:*port* over the tailnet, as
        :func:`asyncio.open_connection` does: a (reader, writer) pair.

        Raises:
            InvalidArgumentError: bad host or port.
            DialError: unknown host, refused, unreachable.
            NodeTimeoutError: the node's own bound on a dial ran out.
            NodeClosedError: the node is closed.
        """
        runtime = self._runtime
        conn = await call_in(runtime, partial(runtime.dial, host, port),
                              dispose=BridgedConn.close_soon)
        return await open_streams(runtime, conn, limit)

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

    def events(self) -> EventStream:
        """Subscribe to this node's events (state changes, auth URLs, restarts, crash loop)
        from the first ``__anext__`` on; the iterator ends when the node closes."""
        return EventStream(self._runtime)

    async def _listen(self, port: int, backlog: int) -> TailnetListener:
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


@asynccontextmanager
async def local_tailnet(**kwargs: Any) -> AsyncIterator[LocalTailnet]:
    """:func:`tsproc.testing.local_tailnet` for asyncio: the control server, DERP and STUN on
    127.0.0.1 for the ``async with`` block (its trio side runs in a thread of its own).
    Takes the same arguments."""
    host = HostedContext(trio_local_tailnet(**kwargs), "tsproc local tailnet")
    ended = await start_host(host)
    try:
        yield LocalTailnet(await call_in(host, host.enter))
    finally:
        await stop_host(host, ended)
