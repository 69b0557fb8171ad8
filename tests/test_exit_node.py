"""Exit nodes, both roles, on the local tailnet (which approves exit routes as it approves
subnet routes): a client that uses a tsproc exit node dials a documentation address, and the
exit node's any-port listener gets the flow with that destination. Without an exit node the
same dial is refused at once — nothing goes through the host's network (the offline namespace
counts packets on its only other interface)."""

from __future__ import annotations

import pytest
import trio

import tsproc
from tsproc.testing import local_tailnet

TARGET = ("198.51.100.7", 80)  # TEST-NET-2: no such host anywhere


async def answer(listener: tsproc.TailnetListener, seen: list[tuple[str, int]]) -> None:
    while True:
        stream = await listener.accept()
        async with stream:
            seen.append(stream.local_addr)
            await stream.send_all(b"via the exit node")


async def dial_through(client: tsproc.Node) -> bytes:
    """Dial TARGET until the client's netmap has the exit node's routes (approval takes a
    moment), and read the answer."""
    with trio.fail_after(60):
        while True:
            try:
                with trio.fail_after(5):
                    async with await client.dial(*TARGET) as stream:
                        return await stream.receive_some(100)
            except (tsproc.DialError, trio.TooSlowError):
                await trio.sleep(0.2)


async def refused(client: tsproc.Node) -> None:
    with trio.fail_after(10), pytest.raises(tsproc.DialError):
        await client.dial(*TARGET)
    with trio.fail_after(10), pytest.raises(tsproc.DialError):
        await client.dial_udp(*TARGET)


@pytest.mark.offline
async def test_dials_outside_the_tailnet_go_through_the_exit_node_and_only_then():
    async with local_tailnet() as tailnet, \
            tailnet.node("exit", advertise_exit_node=True) as exit_node, \
            tailnet.node("client") as client, trio.open_nursery() as nursery:
        seen: list[tuple[str, int]] = []
        nursery.start_soon(answer, await exit_node.listen_any_port(), seen)
        await refused(client)
        assert seen == []

        await client.set_exit_node("exit")
        assert await dial_through(client) == b"via the exit node"
        assert seen[-1] == TARGET  # the original destination, not the exit node's address
        udp = await client.dial_udp(*TARGET)  # routed too (the exit node takes no UDP here)
        await udp.aclose()

        await client.set_exit_node(None)
        await refused(client)

        # The constructor's exit_node: the same, from the start.
        async with tailnet.node("client2", exit_node=str(exit_node.tailscale_ips[0])) as c2:
            assert await dial_through(c2) == b"via the exit node"
        nursery.cancel_scope.cancel()


@pytest.mark.offline
async def test_set_exit_node_refuses_unknown_nodes_and_itself():
    async with local_tailnet() as tailnet, tailnet.node("lonely") as node:
        with trio.fail_after(10), pytest.raises(tsproc.DialError):
            await node.set_exit_node("nobody")
        with pytest.raises(tsproc.InvalidArgumentError):
            await node.set_exit_node("lonely")
        with pytest.raises(tsproc.InvalidArgumentError):
            await node.set_exit_node("")
