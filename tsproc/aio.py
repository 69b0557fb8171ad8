"""The node for asyncio code: asyncio streams on tailnet connections, with tsproc's promises.

    import asyncio, tsproc.aio

    async def main():
        async with tsproc.aio.Node("client", auth_key=key) as node:
            reader, writer = await node.dial("web", 80)
            writer.write(b"GET / HTTP/1.0\\r\\n\\r\\n")
            print(await reader.read())
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())

The node itself is tsproc's trio :class:`~tsproc.Node`, running in a thread of its own (one trio
run per node; see docs/design.md, "Other faces"). Each connection is a real kernel socket: its
fd (a duplicate of the one the helper passed) becomes an ordinary asyncio transport, so bytes
never cross threads. What stays true under asyncio:

- A connection cut by a helper crash raises :class:`ConnectionResetError` from the reader; it
  never reads as a clean EOF (the reader delivers EOF only once the helper has confirmed that the
  peer ended in order). A stream closed locally raises :class:`ConnectionAbortedError` on read.
- Cancelling any call (``asyncio.timeout``, ``wait_for``, Ctrl-C under ``asyncio.run``) cancels
  the trio side too, and a connection that was made anyway is closed, never leaked.
- Closing the node (leaving ``async with``) closes its connections, stops the helper and ends
  the node's thread. No loopback TCP port is opened for any of it.

Serve connections with :func:`serve` (shaped like :func:`asyncio.start_server`) and ASGI
applications with :func:`serve_asgi` (hypercorn's asyncio server; the app sees the caller's
tailnet identity as with :mod:`tsproc.asgi`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

import outcome
import trio

from . import Event, NodeState, PingResult, Status, TailnetListener, WhoIs, testing
from . import EventStream as TrioEventStream
from . import Node as TrioNode
from ._bridge import BridgedConn, HostedContext, IPAddress, NodeRuntime
from .errors import NodeClosedError, TsprocError
from .testing import local_tailnet as trio_local_tailnet

if TYPE_CHECKING:
    from hypercorn.config import Config


__all__ = [
    "EventStream",
    "LocalTailnet",
    "Node",
    "TailnetServer",
    "TailnetStreamWriter",
    "local_tailnet",
    "serve",
    "serve_asgi",
]

T = TypeVar("T")

ClientConnectedCallback = Callable[
    [asyncio.StreamReader, "TailnetStreamWriter"], Awaitable[None] | None
]
"""What :func:`serve` calls for each connection, like :func:`asyncio.start_server`'s."""

_DEFAULT_LIMIT: Final = 2**16  # asyncio.streams' default buffer limit
_WHOIS_TIMEOUT: Final = 10.0
_log = logging.getLogger("tsproc.aio")


async def _call_in(runtime: HostedContext[Any], fn: Callable[[], Awaitable[T]],
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


async def _start_host(host: HostedContext[Any]) -> asyncio.Future[None]:
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


async def _stop_host(host: HostedContext[Any], ended: asyncio.Future[None] | None) -> None:
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
            await _call_in(self._runtime, self._conn.verify_eof)
        except ConnectionResetError as exc:
            self._eof_state = "broken"
            self._tsproc_reader.set_exception(exc)
        except NodeClosedError as exc:
            self._eof_state = "broken"
            self._tsproc_reader.set_exception(ConnectionResetError(
                f"tailnet connection broken: {exc}"))
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


async def _open_streams(runtime: NodeRuntime, conn: BridgedConn, limit: int,
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
            self._stream = await _call_in(self._runtime, self._subscribe)
        stream = self._stream
        try:
            return await _call_in(self._runtime, stream.__anext__)
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
                await _call_in(self._runtime, stream.aclose)

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@final
class Node:
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

    # -- read-only facts (plain attribute reads of the trio node) --

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

    async def __aenter__(self) -> Node:
        if self._entered:
            raise RuntimeError("a Node can be entered only once; create a new one")
        self._entered = True
        self._ended = await _start_host(self._runtime)
        try:
            await _call_in(self._runtime, self._runtime.enter)
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
        await _stop_host(self._runtime, self._ended)

    # -- using the node --

    async def dial(self, host: str, port: int, *, limit: int = _DEFAULT_LIMIT,
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
        conn = await _call_in(runtime, partial(runtime.dial, host, port),
                              dispose=BridgedConn.close_soon)
        return await _open_streams(runtime, conn, limit)

    async def whois(self, addr: str | tuple[str, int] | IPAddress) -> WhoIs:
        """Who is behind a tailnet address (``writer.remote_addr``, an IP, ``"ip:port"``).

        Raises:
            NotFoundError: no tailnet node has that address.
        """
        return await _call_in(self._runtime, partial(self._runtime.node.whois, addr))

    async def status(self) -> Status:
        """The node's current status: backend state, addresses, peers, helper figures."""
        return await _call_in(self._runtime, self._runtime.node.status)

    async def ping(self, peer: str) -> PingResult:
        """Ping *peer* with TSMP through WireGuard (see :meth:`tsproc.Node.ping`)."""
        return await _call_in(self._runtime, partial(self._runtime.node.ping, peer))

    def events(self) -> EventStream:
        """Subscribe to this node's events (state changes, auth URLs, restarts, crash loop)
        from the first ``__anext__`` on; the iterator ends when the node closes."""
        return EventStream(self._runtime)

    async def _listen(self, port: int, backlog: int) -> TailnetListener:
        runtime = self._runtime
        return await _call_in(runtime, partial(runtime.node.listen, port, backlog=backlog),
                              dispose=runtime.close_listener_soon)


@final
class TailnetServer:
    """A server on a tailnet port (:func:`serve`), shaped like :class:`asyncio.Server`:
    ``close()``, ``await wait_closed()``, ``await serve_forever()``, ``async with``."""

    def __init__(self, node: Node, port: int, callback: ClientConnectedCallback, limit: int,
                 writer_class: type[TailnetStreamWriter]) -> None:
        self._node = node
        self._runtime = node._runtime
        self.port = port
        """The tailnet port it serves."""
        self._callback = callback
        self._limit = limit
        self._writer_class = writer_class
        self._loop = asyncio.get_running_loop()
        self._accepting: Any = None  # the trio-side accept loop (a Call)
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._serving = False
        self._handlers: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        state = "serving" if self._serving else "closed"
        return f"<tsproc.aio.TailnetServer {self._node.hostname}:{self.port} {state}>"

    @property
    def url(self) -> str:
        return f"http://{self._node.hostname}:{self.port}/"

    async def _start(self, backlog: int) -> None:
        listener = await self._node._listen(self.port, backlog)
        loop = self._loop

        async def accept_loop() -> None:  # in the trio thread, until cancelled
            try:
                while True:
                    try:
                        conn = await self._runtime.accept(listener)
                    except trio.ClosedResourceError:
                        return
                    try:
                        loop.call_soon_threadsafe(self._on_connection, conn)
                    except RuntimeError:  # the loop is closed
                        conn.close()
                        return
            finally:
                with trio.CancelScope(shield=True):
                    await listener.aclose()

        def on_done(result: outcome.Outcome[None]) -> None:
            with suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(self._on_stopped)

        self._accepting = self._runtime.thread.submit(accept_loop, on_done)
        self._serving = True

    def _on_connection(self, conn: BridgedConn) -> None:
        if not self._serving:
            conn.close_soon()
            return
        task = self._loop.create_task(self._handle(conn))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _handle(self, conn: BridgedConn) -> None:
        reader, writer = await _open_streams(self._runtime, conn, self._limit, self._writer_class)
        try:
            result = self._callback(reader, writer)
            if result is not None:
                await result
        except Exception as exc:
            self._loop.call_exception_handler({
                "message": "Unhandled exception in client_connected_cb",
                "exception": exc,
                "transport": writer.transport,
            })
            writer.close()
        except BaseException:  # cancelled (asyncio.run ending, say): nobody serves it now
            writer.close()
            raise

    def _on_stopped(self) -> None:
        self._serving = False
        if not self._closed.done():
            self._closed.set_result(None)

    def is_serving(self) -> bool:
        return self._serving

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def close(self) -> None:
        """Stop accepting; the port is released shortly (see :meth:`wait_closed`).
        Connections already handed to the callback stay open."""
        self._serving = False
        if self._accepting is not None:
            self._accepting.cancel()

    async def wait_closed(self) -> None:
        """Wait until the server is closed and its port released."""
        await asyncio.shield(self._closed)

    async def serve_forever(self) -> None:
        """Serve until cancelled (then close, as :meth:`asyncio.Server.serve_forever` does)."""
        try:
            await asyncio.shield(self._closed)
        except asyncio.CancelledError:
            self.close()
            await self.wait_closed()
            raise

    async def __aenter__(self) -> TailnetServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


async def serve(client_connected_cb: ClientConnectedCallback, node: Node, port: int, *,
                limit: int = _DEFAULT_LIMIT, backlog: int = 128) -> TailnetServer:
    """Serve tailnet connections to *port* of *node*, as :func:`asyncio.start_server` does:
    *client_connected_cb* (a function or coroutine function) gets a ``(reader, writer)`` pair
    for each. ``writer.remote_addr`` is the caller's tailnet address (see :meth:`Node.whois`).

    Returns once the port accepts connections.

    Raises:
        AddressInUseError: the node already listens on *port*.
    """
    server = TailnetServer(node, port, client_connected_cb, limit, TailnetStreamWriter)
    await server._start(backlog)
    return server


# -- ASGI --

@final
class _TailnetSocketInfo:
    """What hypercorn's asyncio TCPServer reads of ``get_extra_info("socket")``: the family and
    the tailnet addresses, so ``scope["client"]`` is the tailnet peer."""

    def __init__(self, writer: TailnetStreamWriter) -> None:
        self._local = writer.local_addr
        self._remote = writer.remote_addr
        self.family = socket.AF_INET6 if ":" in self._remote[0] else socket.AF_INET

    def getpeername(self) -> tuple[str, int]:
        return self._remote

    def getsockname(self) -> tuple[str, int]:
        return self._local


@final
class _HypercornWriter(TailnetStreamWriter):
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return _TailnetSocketInfo(self)
        return super().get_extra_info(name, default)


async def serve_asgi(
    app: Callable[[Any, Any, Any], Awaitable[None]],
    node: Node,
    port: int = 80,
    *,
    config: Config | None = None,
    backlog: int = 128,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    on_started: Callable[[str], object] | None = None,
) -> None:
    """Serve the ASGI *app* (FastAPI, Starlette, Django …) on *port* of *node* with hypercorn's
    asyncio server, until cancelled or *shutdown_trigger* returns.

    The app sees the caller as the tailnet says, exactly as with :func:`tsproc.asgi.serve`:
    ``scope["client"]`` is the peer's tailnet address, ``scope["extensions"]["tsproc.whois"]``
    its identity (see :func:`tsproc.asgi.scope_whois`), and request headers that claim a
    tailnet identity (``Tailscale-User-Login`` …) are removed. A connection whose WhoIs fails
    is closed without a request.

    Runs the app's lifespan; *on_started* gets the URL once the port accepts connections.
    Shutting down (trigger or cancellation): the port closes, connections get
    ``config.graceful_timeout`` to finish, then the lifespan shutdown runs.

    Needs ``pip install 'tsproc[asgi]'`` (hypercorn, pinned: its asyncio ``TCPServer``,
    ``Lifespan`` and ``WorkerContext`` are internal, as ``hypercorn.asyncio.run`` uses them).
    """
    # hypercorn is an optional extra: imported when an ASGI app is served, not with tsproc.aio.
    from hypercorn.asyncio.lifespan import Lifespan  # noqa: PLC0415
    from hypercorn.asyncio.statsd import StatsdLogger  # noqa: PLC0415
    from hypercorn.asyncio.tcp_server import TCPServer  # noqa: PLC0415
    from hypercorn.asyncio.worker_context import WorkerContext  # noqa: PLC0415
    from hypercorn.config import Config  # noqa: PLC0415
    from hypercorn.utils import wrap_app  # noqa: PLC0415

    from .asgi import _identity, _PeerApp  # noqa: PLC0415 - it imports hypercorn too

    config = config if config is not None else Config()
    config.set_statsd_logger_class(StatsdLogger)
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    loop = asyncio.get_running_loop()
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, loop, lifespan_state)
    context = WorkerContext(config.max_requests)
    connections: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: TailnetStreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        task.add_done_callback(connections.discard)
        try:
            async with asyncio.timeout(_WHOIS_TIMEOUT):
                who = await node.whois(writer.remote_addr)
        except (TsprocError, TimeoutError) as exc:
            _log.warning("closing connection from %s: WhoIs failed: %s", writer.remote_addr, exc)
            writer.close()
            return
        await TCPServer(_PeerApp(wrapped, _identity(who)), loop, config, context,
                        lifespan_state, reader, writer)

    lifespan_task = loop.create_task(lifespan.handle_lifespan())
    try:
        await lifespan.wait_for_startup()
        if lifespan_task.done() and lifespan_task.exception() is not None:
            raise lifespan_task.exception()  # type: ignore[misc]
        server = TailnetServer(node, port, handle, _DEFAULT_LIMIT, _HypercornWriter)
        await server._start(backlog)
        try:
            if on_started is not None:
                on_started(server.url)
            waits = [loop.create_task(context.terminate.wait())]
            if shutdown_trigger is not None:
                waits.append(loop.create_task(_awaited(shutdown_trigger)))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        finally:
            await context.terminated.set()
            server.close()
            await server.wait_closed()
            if connections:
                await asyncio.wait(list(connections), timeout=config.graceful_timeout)
            for task in list(connections):
                task.cancel()
            await lifespan.wait_for_shutdown()
    finally:
        lifespan_task.cancel()
        with suppress(asyncio.CancelledError):
            await lifespan_task


async def _awaited(trigger: Callable[[], Awaitable[object]]) -> None:
    await trigger()


# -- a local tailnet for asyncio tests and demos --

@final
class LocalTailnet:
    """A local tailnet (:func:`local_tailnet`) running in a trio thread of its own."""

    def __init__(self, tailnet: testing.LocalTailnet) -> None:
        self.control_url = tailnet.control_url
        self._auth_key = tailnet.auth_key

    def __repr__(self) -> str:
        return f"<tsproc.aio.LocalTailnet {self.control_url}>"

    def node(self, hostname: str, **kwargs: Any) -> Node:
        """A :class:`Node` on this tailnet (ephemeral, with its key); use it with
        ``async with``."""
        kwargs.setdefault("control_url", self.control_url)
        kwargs.setdefault("ephemeral", True)
        if self._auth_key is not None:
            kwargs.setdefault("auth_key", self._auth_key)
        return Node(hostname, **kwargs)


@asynccontextmanager
async def local_tailnet(**kwargs: Any) -> AsyncIterator[LocalTailnet]:
    """:func:`tsproc.testing.local_tailnet` for asyncio: the control server, DERP and STUN on
    127.0.0.1 for the ``async with`` block (its trio side runs in a thread of its own).
    Takes the same arguments."""
    host = HostedContext(trio_local_tailnet(**kwargs), "tsproc local tailnet")
    ended = await _start_host(host)
    try:
        yield LocalTailnet(await _call_in(host, host.enter))
    finally:
        await _stop_host(host, ended)
