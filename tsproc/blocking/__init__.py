"""The node for blocking code."""

from ._node import (
    EventIterator,
    Listener,
    LocalTailnet,
    Node,
    TailnetServer,
    TailnetSocket,
    ThreadingTailnetServer,
    local_tailnet,
    pool_manager,
    requests_adapter,
)

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
