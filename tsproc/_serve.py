"""``tsproc.serve_tcp``: :func:`trio.serve_tcp` for a node's tailnet port."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NoReturn

import trio

from ._config import DEFAULT_BACKLOG
from ._node import Node
from ._streams import TailnetListener, TailnetStream

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
    handler propagates, and ``await nursery.start(tsproc.serve_tcp, handler, node, port)``
    returns the listeners (one :class:`~tsproc.TailnetListener`) once the port accepts
    connections. The listener is closed when this returns, so the port is free again.

    Raises:
        AddressInUseError: the node already listens on *port*.
        InvalidArgumentError: *port* or *backlog* out of range.
    """
    listener = await node.listen(port, backlog=backlog)
    try:
        await trio.serve_listeners(handler, [listener], handler_nursery=handler_nursery,
                                   task_status=task_status)
    finally:
        with trio.CancelScope(shield=True):
            await listener.aclose()
