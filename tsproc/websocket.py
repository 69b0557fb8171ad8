"""WebSockets over the tailnet with trio-websocket (``pip install 'tsproc[websocket]'``).

trio-websocket runs over any trio stream, so it works on tsproc's as they are:
``trio_websocket.WebSocketServer(handler, [listener])`` serves a :class:`~tsproc.TailnetListener`
and ``trio_websocket.wrap_client_stream(nursery, stream, host, resource)`` speaks over a dialled
:class:`~tsproc.TailnetStream` (their type hints name ``trio.SocketStream``/``SocketListener``
only). The helpers here do the dialling and listening, keep type checkers happy, and tell a
server handler who is on the other end:

    async def handler(request: WebSocketRequest, peer: tsproc.websocket.Peer) -> None:
        ws = await request.accept()
        await ws.send_message(f"hello {peer.whois.user.login_name}")

    await tsproc.websocket.serve_websocket(handler, node, 8080)

    async with tsproc.websocket.open_websocket(node, "server", 8080, "/") as ws:
        print(await ws.get_message())

(Served through :mod:`tsproc.asgi` instead, a WebSocket's ASGI scope carries the same identity.)
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, NoReturn, cast, final

import trio

try:
    from trio_websocket import (
        ConnectionTimeout,
        DisconnectionTimeout,
        HandshakeError,
        WebSocketConnection,
        WebSocketRequest,
        WebSocketServer,
        wrap_client_stream,
    )
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        f"tsproc.websocket needs trio-websocket: pip install 'tsproc[websocket]' ({exc})"
    ) from exc

from ._core.config import DEFAULT_BACKLOG
from ._core.node import Node
from ._core.streams import TailnetListener, TailnetStream
from ._core.types import WhoIs
from ._identity import whois_peer

__all__ = [
    "Peer",
    "TailnetWebSocketServer",
    "connect_websocket",
    "open_websocket",
    "serve_websocket",
]

# trio-websocket's defaults.
_MESSAGE_QUEUE_SIZE: Final = 1
_MAX_MESSAGE_SIZE: Final = 1 << 20
_RECEIVE_BUFFER: Final = 4 << 10
_CONN_TIMEOUT: Final = 60.0


@dataclass(frozen=True, slots=True)
class Peer:
    """The other end of a served WebSocket: its tailnet address and verified identity."""

    addr: tuple[str, int]
    """The peer's tailnet (ip, port)."""
    whois: WhoIs
    """Who the tailnet says the peer is (node, user, tags)."""


def _host_header(host: str, port: int) -> str:
    name = f"[{host}]" if ":" in host else host
    return name if port == 80 else f"{name}:{port}"


@final
class _ClientStream(trio.abc.HalfCloseableStream):
    """A dialled TailnetStream that closes itself at EOF.

    When the server starts the closing handshake, trio-websocket's client waits for the TCP
    close (as RFC 6455 says), then ends its reader without closing the stream, and a later
    ``aclose()`` of the connection returns early because it is already closed: the stream would
    be left open (and leak its fd). After EOF a WebSocket client has nothing left to send, so
    closing there is safe.
    """

    def __init__(self, stream: TailnetStream) -> None:
        self.stream = stream

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.stream.receive_some(max_bytes)
        if not data:
            await self.stream.aclose()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def connect_websocket(
    nursery: trio.Nursery,
    node: Node,
    host: str,
    port: int,
    resource: str,
    *,
    subprotocols: Iterable[str] | None = None,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    message_queue_size: int = _MESSAGE_QUEUE_SIZE,
    max_message_size: int = _MAX_MESSAGE_SIZE,
    receive_buffer_size: int | None = _RECEIVE_BUFFER,
) -> WebSocketConnection:
    """Dial *host*:*port* over the tailnet and open a WebSocket to *resource* on it.

    Like ``trio_websocket.connect_websocket``: background tasks run in *nursery* and the caller
    closes the connection. Most code wants :func:`open_websocket`.

    Raises:
        DialError, NodeTimeoutError: the tailnet dial failed.
        trio_websocket.HandshakeError (ConnectionRejected …): the WebSocket handshake failed.
    """
    stream = _ClientStream(await node.dial(host, port))
    try:
        return await wrap_client_stream(
            nursery,
            cast(trio.SocketStream, stream),  # any trio.abc.Stream works; the hint is narrower
            _host_header(host, port),
            resource,
            subprotocols=subprotocols,
            extra_headers=extra_headers,
            message_queue_size=message_queue_size,
            max_message_size=max_message_size,
            receive_buffer_size=receive_buffer_size,
        )
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


@asynccontextmanager
async def open_websocket(
    node: Node,
    host: str,
    port: int,
    resource: str,
    *,
    subprotocols: Iterable[str] | None = None,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    message_queue_size: int = _MESSAGE_QUEUE_SIZE,
    max_message_size: int = _MAX_MESSAGE_SIZE,
    receive_buffer_size: int | None = _RECEIVE_BUFFER,
    connect_timeout: float = _CONN_TIMEOUT,
    disconnect_timeout: float = _CONN_TIMEOUT,
) -> AsyncIterator[WebSocketConnection]:
    """A WebSocket client connection over the tailnet, closed when the block ends::

        async with open_websocket(node, "server", 8080, "/chat") as ws:
            await ws.send_message("hi")

    Raises:
        DialError: the tailnet dial failed.
        trio_websocket.ConnectionTimeout / DisconnectionTimeout: a handshake took too long.
        trio_websocket.HandshakeError (ConnectionRejected …): the server refused.
    """
    try:
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(connect_timeout):
                    ws = await connect_websocket(
                        nursery, node, host, port, resource,
                        subprotocols=subprotocols, extra_headers=extra_headers,
                        message_queue_size=message_queue_size,
                        max_message_size=max_message_size,
                        receive_buffer_size=receive_buffer_size,
                    )
            except trio.TooSlowError:
                raise ConnectionTimeout from None
            except OSError as exc:
                raise HandshakeError from exc
            try:
                yield ws
            finally:
                try:
                    with trio.fail_after(disconnect_timeout):
                        await ws.aclose()
                except trio.TooSlowError:
                    raise DisconnectionTimeout from None
    except BaseExceptionGroup as group:
        # The nursery exists only for the connection's reader task, which ends quietly: what
        # the group holds is the caller's own exception (or ours), so raise it bare.
        if len(group.exceptions) == 1:
            _reraise_bare(group.exceptions[0])
        raise


def _reraise_bare(exc: BaseException) -> NoReturn:
    context = exc.__context__
    try:
        raise exc
    finally:
        # Raising inside `except` would make the group the exception's context.
        exc.__context__ = context
        del exc, context


_accepted_stream: contextvars.ContextVar[TailnetStream] = contextvars.ContextVar(
    "tsproc_websocket_accepted_stream"
)


@final
class _AnnouncingListener(trio.abc.Listener[TailnetStream]):
    """A TailnetListener that records each accepted stream in a context variable.

    trio.serve_listeners starts a connection's task right after ``accept()`` returns, from the
    accepting task, and a trio task starts with a copy of its spawner's context: so the task
    that runs the connection (and the handler it calls) sees its own stream here.
    """

    def __init__(self, listener: TailnetListener) -> None:
        self.listener = listener

    async def accept(self) -> TailnetStream:
        stream = await self.listener.accept()
        _accepted_stream.set(stream)
        return stream

    async def aclose(self) -> None:
        await self.listener.aclose()

    def __repr__(self) -> str:
        # What WebSocketServer.listeners shows for a listener that is not a socket.
        return repr(self.listener)


@final
class TailnetWebSocketServer(WebSocketServer):
    """The :class:`~trio_websocket.WebSocketServer` :func:`serve_websocket` runs, on one
    :class:`~tsproc.TailnetListener`: its :attr:`port` is the tailnet port (trio-websocket's
    own works for socket listeners only), and :attr:`listeners` shows the listener's repr."""

    def __init__(self, listener: TailnetListener, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tailnet_listener = listener

    @property
    def port(self) -> int:
        """The tailnet port the server listens on."""
        return self._tailnet_listener.port

    @property
    def tailnet_listener(self) -> TailnetListener:
        """The :class:`~tsproc.TailnetListener` it serves."""
        return self._tailnet_listener

    def __repr__(self) -> str:
        return f"<TailnetWebSocketServer on {self._tailnet_listener!r}>"


async def serve_websocket(
    handler: Callable[[WebSocketRequest, Peer], Awaitable[None]],
    node: Node,
    port: int,
    *,
    handler_nursery: trio.Nursery | None = None,
    backlog: int = DEFAULT_BACKLOG,
    message_queue_size: int = _MESSAGE_QUEUE_SIZE,
    max_message_size: int = _MAX_MESSAGE_SIZE,
    receive_buffer_size: int | None = _RECEIVE_BUFFER,
    connect_timeout: float = _CONN_TIMEOUT,
    disconnect_timeout: float = _CONN_TIMEOUT,
    task_status: trio.TaskStatus[TailnetWebSocketServer] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve WebSockets on *port* of *node*'s tailnet addresses until cancelled.

    Like ``trio_websocket.serve_websocket``, but *handler* is called with the
    :class:`~trio_websocket.WebSocketRequest` and the :class:`Peer` (tailnet address and
    WhoIs) it came from; a connection whose peer cannot be identified is refused with 403. With
    ``nursery.start(serve_websocket, …)`` it reports once the port accepts connections.
    """
    listener = await node.listen(port, backlog=backlog)

    async def handle(request: WebSocketRequest) -> None:
        stream = _accepted_stream.get(None)
        who = None if stream is None else await whois_peer(node, stream.remote_addr, None)
        if stream is None or who is None:
            await request.reject(403, body=b"tailnet identity unavailable\n")
            return
        await handler(request, Peer(stream.remote_addr, who))

    server = TailnetWebSocketServer(
        listener,
        handle,
        [cast(Any, _AnnouncingListener(listener))],  # any trio Listener works; hint is narrower
        handler_nursery=handler_nursery,
        message_queue_size=message_queue_size,
        max_message_size=max_message_size,
        receive_buffer_size=receive_buffer_size,
        connect_timeout=connect_timeout,
        disconnect_timeout=disconnect_timeout,
    )
    try:
        # run() reports the server itself, a TailnetWebSocketServer: the cast only widens.
        await server.run(task_status=cast("trio.TaskStatus[WebSocketServer]", task_status))
    finally:
        with trio.CancelScope(shield=True):
            await listener.aclose()
