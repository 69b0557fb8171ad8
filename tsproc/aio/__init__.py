"""The node for asyncio code."""

from ._node import (
    ClientConnectedCallback,
    EventStream,
    LocalTailnet,
    Node,
    TailnetServer,
    TailnetStreamWriter,
    local_tailnet,
    serve,
    serve_asgi,
)

__all__ = [
    "ClientConnectedCallback",
    "EventStream",
    "LocalTailnet",
    "Node",
    "TailnetServer",
    "TailnetStreamWriter",
    "local_tailnet",
    "serve",
    "serve_asgi",
]
