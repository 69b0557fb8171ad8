"""Exit nodes on Headscale: a node offers itself (``Node(advertise_exit_node=True)``), an admin
approves its exit routes with Headscale's CLI, and a client that picks it
(``set_exit_node``) dials an address outside the tailnet; the exit node's
``listen_any_port()`` gets the flow with its original destination."""

from __future__ import annotations

import pytest
import trio

import tsproc
from tests.interop.test_headscale_routes import _available_routes
from tsproc.testing import HeadscaleTailnet

pytestmark = pytest.mark.offline  # tests/netns.py: the flows must stay inside the helpers

TARGET = ("198.51.100.7", 80)
EXIT_ROUTES = ("0.0.0.0/0", "::/0")


async def test_an_approved_exit_node_carries_a_clients_dial(headscale: HeadscaleTailnet):
    async with headscale.node("exit", advertise_exit_node=True) as exit_node, \
            headscale.node("client") as client, trio.open_nursery() as nursery:
        seen: list[tuple[str, int]] = []

        async def answer(stream: tsproc.TailnetStream) -> None:
            async with stream:
                seen.append(stream.local_addr)
                await stream.send_all(b"via headscale's exit node")

        nursery.start_soon(trio.serve_listeners, answer, [await exit_node.listen_any_port()])
        with pytest.raises(tsproc.DialError), trio.fail_after(30):
            await client.dial(*TARGET)

        (node,) = [n for n in await headscale.list_nodes() if n.name == "exit"]
        with trio.fail_after(30):  # the advertisement reaches Headscale in the background
            while not set(EXIT_ROUTES) <= set(await _available_routes(headscale, node.id)):
                await trio.sleep(0.2)
        await headscale.cli("nodes", "approve-routes", "--identifier", str(node.id),
                            "--routes", ",".join(EXIT_ROUTES))

        with trio.fail_after(60):
            while True:
                try:
                    await client.set_exit_node("exit")
                    with trio.move_on_after(5):
                        stream = await client.dial(*TARGET)
                        break
                except tsproc.DialError:
                    await trio.sleep(0.2)
            async with stream:
                assert await stream.receive_some(100) == b"via headscale's exit node"
        assert seen == [TARGET]
        nursery.cancel_scope.cancel()
