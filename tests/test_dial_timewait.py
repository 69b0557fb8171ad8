"""A connection to a server that closes first never stalls (docs/reliability.md, "A dial between
two running nodes now and then never connects").

Each connection: dial, send 1 byte, read its echo and the server's EOF (so the server has
closed first and holds the connection's TIME_WAIT), close. Without the helper's fix about 1 in
100 such connections on stock tsnet found its 4-tuple still in the server's TIME_WAIT and never
connected. Each is bounded at 5 s, against ~2 ms normally: a connection that needs the bound
has stalled. The tests count stalls; they time nothing.

``TSPROC_TIMEWAIT_CONNECTIONS`` sets the number of connections per test (default 5,000: about
20 s per test on an idle machine).
"""

from __future__ import annotations

import os
from functools import partial

import pytest
import trio

import tsproc
from tests.gopeer import gopeer

CONNECTIONS = int(os.environ.get("TSPROC_TIMEWAIT_CONNECTIONS", "5000"))
BOUND = 5.0

pytestmark = pytest.mark.slow


async def echo_and_close_first(stream: tsproc.TailnetStream) -> None:
    """The server: echo one byte, then close at once, before the client."""
    async with stream:
        data = await stream.receive_some(1)
        if data:
            await stream.send_all(data)


async def serve_echo(node: tsproc.Node, port: int, nursery: trio.Nursery) -> None:
    listener = await node.listen(port)
    nursery.start_soon(partial(trio.serve_listeners, echo_and_close_first, [listener]))


async def test_tsproc_to_tsproc_server_closes_first_never_stalls(tailnet_node):
    async with (tailnet_node("server") as server, tailnet_node("client") as client,
                trio.open_nursery() as nursery):
        await serve_echo(server, 91, nursery)
        target = str(server.tailscale_ips[0])
        stalls = []
        for i in range(CONNECTIONS):
            with trio.move_on_after(BOUND) as scope:
                try:
                    stream = await client.dial(target, 91)
                except tsproc.NodeTimeoutError:  # the helper's end of the same deadline
                    stalls.append(i)
                    continue
                async with stream:
                    await stream.send_all(b"x")
                    got = b""
                    while data := await stream.receive_some():
                        got += data
                    assert got == b"x"
            if scope.cancelled_caught:
                stalls.append(i)
        nursery.cancel_scope.cancel()
    assert stalls == [], f"{len(stalls)} of {CONNECTIONS} connections stalled: {stalls[:20]}"


async def test_pure_go_to_tsproc_server_closes_first_never_stalls(tailnet, tailnet_node):
    async with (tailnet_node("server") as server, gopeer(tailnet.control_url) as peer,
                trio.open_nursery() as nursery):
        await serve_echo(server, 92, nursery)
        await peer.command(f"probe {server.tailscale_ips[0]}:92 {CONNECTIONS}")
        with trio.fail_after(CONNECTIONS * BOUND):
            result = await peer.event("probe")
        nursery.cancel_scope.cancel()
    assert result["n"] == CONNECTIONS
    assert result["stalls"] == 0, result["errors"]
