"""``tsproc.serve_tcp``: :func:`trio.serve_tcp` for a node's tailnet port."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import NoReturn, final

import trio

from .config import DEFAULT_BACKLOG
from .node import Node
from .streams import TailnetListener, TailnetStream

__all__ = ["serve_tcp"]


async def serve_tcp(
    handler: Callable[[TailnetStream], Awaitable[object]],
    node: Node,
    port: int,
    *,
    backlog: int = DEFAULT_BACKLOG,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[TailnetListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Listen on *port* of *node*'s tailnet addresses and run ``handler(stream)`` for each
    connection, until cancelled: the tailnet's :func:`trio.serve_tcp`.

    The handler learns who called with ``await stream.whois()``. As with trio, each handler
    runs in *handler_nursery* (default: one of this function's own), an exception from a
    handler propagates (and unlike trio, the connection it leaves open is reset:
    :meth:`TailnetStream.reset`; one it leaves open when it returns is closed), and
    ``await nursery.start(tsproc.serve_tcp, handler, node, port)``
    returns the listeners (one :class:`~tsproc.TailnetListener`) once the port accepts
    connections. The listener is closed when this returns, so the port is free again.

    Raises:
        AddressInUseError: the node already listens on *port*.
        InvalidArgumentError: *port* or *backlog* out of range.
    """
    listener = await node.listen(port, backlog=backlog)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(trio.serve_listeners, partial(_handle, handler),
                                        [_ClosedByUs(listener)],
                                        handler_nursery=handler_nursery))
            task_status.started([listener])
    finally:
        # Shielded: aclose waits until the helper has released the port, so it can be
        # listened on again the moment this returns.
        with trio.CancelScope(shield=True):
            await listener.aclose()
    raise AssertionError("unreachable: trio.serve_listeners returned")  # pragma: no cover


async def _handle(handler: Callable[[TailnetStream], Awaitable[object]],
                  stream: TailnetStream) -> None:
    try:
        await handler(stream)
    except BaseException:
        # The handler failed (or was cancelled) with the connection open: its peer must read
        # a reset, not an EOF that passes for a complete reply. After the handler's own close
        # this does nothing.
        stream.reset_now()
        raise
    # A handler that just returns (the README's) has said all it will: close in order now,
    # rather than when the stream is garbage-collected (with a ResourceWarning).
    await stream.aclose()


@final
class _ClosedByUs(trio.abc.Listener[TailnetStream]):
    """The listener as trio.serve_listeners sees it: its cancelled ``async with`` would close
    the listener without waiting for the port's release, so serve_tcp closes it instead."""

    def __init__(self, listener: TailnetListener) -> None:
        self._listener = listener

    async def accept(self) -> TailnetStream:
        return await self._listener.accept()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
