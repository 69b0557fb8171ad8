"""What the application does while a helper restarts must still hold afterwards — defects the
soak (issue 15, docs/reliability.md) went looking for."""

from __future__ import annotations

import os
import signal

import trio

import tsproc

FAST = tsproc.RestartPolicy(initial_backoff=0.05, heartbeat_interval=0.5, heartbeat_timeout=2.0)


async def _restarted(node: tsproc.Node, events: tsproc.EventStream) -> None:
    with trio.fail_after(30):
        async for event in events:
            if isinstance(event, tsproc.HelperRestartedEvent):
                return
    raise AssertionError("no restart")


async def test_closing_a_listener_while_the_node_restarts(tailnet_node):
    # aclose() while no helper holds the listener (the old one died, the new one is not up):
    # it must just forget it — not raise (an Event was once used as a bool here), and not
    # take the supervisor down.
    async with tailnet_node("closer", restart=FAST) as node:
        listener = await node.listen(9510)
        events = node.events()
        os.kill(node.helper_pid, signal.SIGKILL)
        with trio.fail_after(10):
            while node.state is tsproc.NodeState.RUNNING:
                await trio.sleep(0.01)
        await listener.aclose()
        await _restarted(node, events)
        assert node.state is tsproc.NodeState.RUNNING
        assert (await node.status()).helper_listeners == 0
        again = await node.listen(9510)
        await again.aclose()
