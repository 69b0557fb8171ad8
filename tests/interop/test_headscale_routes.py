"""Subnet routes on Headscale: a node advertises a route (``Node(advertise_routes=...)``), an
admin approves it with Headscale's CLI, and another node's connections to addresses inside it
reach the router's ``listen_any_port()`` with the original destination."""

from __future__ import annotations

import pytest
import trio

import tsproc
from tsproc.testing import HeadscaleTailnet

pytestmark = pytest.mark.offline  # tests/netns.py: the routed flows must stay inside the helpers

ROUTE = "10.77.0.0/24"


async def echo_upper(stream: tsproc.TailnetStream) -> None:
    async with stream:
        while data := await stream.receive_some():
            await stream.send_all(data.upper())


async def test_an_approved_route_reaches_listen_any_port(headscale: HeadscaleTailnet):
    async with headscale.node("router", advertise_routes=[ROUTE]) as router, \
            headscale.node("client") as client, trio.open_nursery() as nursery:
        listener = await router.listen_any_port()
        local_addrs: list[tuple[str, int]] = []

        async def handle(stream: tsproc.TailnetStream) -> None:
            local_addrs.append(stream.local_addr)
            await echo_upper(stream)

        nursery.start_soon(trio.serve_listeners, handle, [listener])

        # Not approved yet: the route is nobody's, so it is not on the tailnet.
        with pytest.raises(tsproc.DialError), trio.fail_after(30):
            await client.dial("10.77.0.5", 80)

        (node,) = [n for n in await headscale.list_nodes() if n.name == "router"]
        with trio.fail_after(30):  # the advertisement reaches Headscale in the background
            while ROUTE not in await _available_routes(headscale, node.id):
                await trio.sleep(0.2)
        await headscale.cli("nodes", "approve-routes", "--identifier", str(node.id),
                            "--routes", ROUTE)

        with trio.fail_after(60):
            while True:
                try:
                    with trio.move_on_after(5):
                        stream = await client.dial("10.77.0.5", 80)
                        break
                except tsproc.DialError:
                    await trio.sleep(0.2)
            await stream.send_all(b"through headscale")
            got = b""
            while len(got) < len(b"through headscale"):
                chunk = await stream.receive_some()
                assert chunk
                got += chunk
        assert got == b"THROUGH HEADSCALE"
        await stream.aclose()
        assert local_addrs == [("10.77.0.5", 80)]
        nursery.cancel_scope.cancel()


async def _available_routes(headscale: HeadscaleTailnet, node_id: int) -> list[str]:
    for raw in await headscale.cli("nodes", "list-routes") or ():
        if int(raw.get("id", -1)) == node_id:
            return [str(r) for r in raw.get("available_routes") or ()]
    return []
