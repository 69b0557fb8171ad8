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

from ._node import EventStream, LocalTailnet, Node, local_tailnet
from ._serve import ClientConnectedCallback, TailnetServer, serve, serve_asgi
from ._streams import TailnetStreamWriter

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
