"""Serving on tailnet ports for asyncio: :func:`serve` (an :class:`asyncio.Server` shape) and
:func:`serve_asgi` (hypercorn's asyncio server).

Private to :mod:`tsproc.aio`, which re-exports the public names.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from functools import partial
from typing import TYPE_CHECKING, Any, final

import outcome
import trio

from .._core.config import DEFAULT_BACKLOG
from .._faces.bridge import BridgedConn
from .._identity import PeerApp, TailnetSocketInfo, identity, whois_peer
from ..errors import NodeClosedError
from ._streams import DEFAULT_LIMIT, TailnetStreamWriter, call_in, open_streams

if TYPE_CHECKING:
    from hypercorn.config import Config

    from ._node import Node


ClientConnectedCallback = Callable[
    [asyncio.StreamReader, "TailnetStreamWriter"], Awaitable[None] | None
]
"""What :func:`serve` calls for each connection, like :func:`asyncio.start_server`'s."""


_log = logging.getLogger("tsproc.aio")


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
        reader, writer = await open_streams(self._runtime, conn, self._limit, self._writer_class)
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
                limit: int = DEFAULT_LIMIT, backlog: int = DEFAULT_BACKLOG) -> TailnetServer:
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
class _HypercornWriter(TailnetStreamWriter):
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":  # what hypercorn's TCPServer reads the addresses from
            return TailnetSocketInfo(self)
        return super().get_extra_info(name, default)


async def serve_asgi(
    app: Callable[[Any, Any, Any], Awaitable[None]],
    node: Node,
    port: int = 80,
    *,
    config: Config | None = None,
    backlog: int = DEFAULT_BACKLOG,
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
        runtime = node._runtime
        try:
            who = await call_in(runtime,
                                partial(whois_peer, runtime.node, writer.remote_addr, _log))
        except NodeClosedError:
            who = None
        if who is None:
            writer.close()
            return
        await TCPServer(PeerApp(wrapped, identity(who)), loop, config, context,
                        lifespan_state, reader, writer)

    lifespan_task = loop.create_task(lifespan.handle_lifespan())
    try:
        await lifespan.wait_for_startup()
        if lifespan_task.done() and lifespan_task.exception() is not None:
            raise lifespan_task.exception()  # type: ignore[misc]
        server = TailnetServer(node, port, handle, DEFAULT_LIMIT, _HypercornWriter)
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
