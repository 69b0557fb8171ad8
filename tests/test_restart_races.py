"""What the application does while a helper restarts must still hold afterwards — defects the
soak (issue 15, docs/reliability.md) went looking for."""

from __future__ import annotations

import dataclasses
import os
import signal

import pytest
import trio

import tsproc
from tsproc._core import generation as _generation

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


async def test_a_listener_closed_while_the_new_helper_reopens_it_is_closed_there_too(
    tailnet_node, monkeypatch
):
    # The application closes a listener at the moment a new helper is re-creating it (after
    # a crash). The new helper must not keep it: its port would stay taken (listen() again
    # fails with AddressInUseError) and connections to it would be accepted and dropped.
    async with tailnet_node("relisten", restart=FAST) as node, \
            tailnet_node("dialer", restart=FAST) as dialer:
        keep = await node.listen(9500)
        doomed = await node.listen(9501)
        base = (await node.status()).helper_listeners
        real_request = _generation.Generation.request
        closed_during_relisten = trio.Event()

        async def request(self, method, params, **kwargs):
            if (self.number == 2 and method == "listen" and params.get("port") == 9501
                    and not closed_during_relisten.is_set()):
                closed_during_relisten.set()
                await doomed.aclose()  # the application, just as the helper re-creates it
            return await real_request(self, method, params, **kwargs)

        monkeypatch.setattr(_generation.Generation, "request", request)
        events = node.events()
        os.kill(node.helper_pid, signal.SIGKILL)
        await _restarted(node, events)
        assert closed_during_relisten.is_set()
        monkeypatch.undo()

        with trio.fail_after(30):
            while (await node.status()).helper_listeners != base - 1:
                await trio.sleep(0.1)
        with pytest.raises(tsproc.DialError):
            with trio.fail_after(30):
                await dialer.dial("relisten", 9501)
        again = await node.listen(9501)  # the port is free
        await again.aclose()
        await keep.aclose()


async def test_accept_as_the_helper_of_its_queued_connection_dies_keeps_the_listener(
        tailnet_node):
    # A helper's death drops the connections it queued (TailnetListener.drop_generation).
    # accept() once yielded between seeing a queued connection and taking it; a death in that
    # yield emptied the queue, and accept() raised ClosedResourceError for a listener that
    # stayed open (a 1-minute soak's service task then listened again, and met its own
    # listener's port for a minute). Each round queues a connection and has its helper die
    # (the host's own death path, as a missed heartbeat takes it) in the same scheduling
    # round as accept(): trio runs the two in either order, so six rounds meet the yield
    # with 63 in 64 odds, had it come back.
    # Six deaths in a row are six failures to the supervisor unless each helper counts as
    # stable by the next death.
    policy = dataclasses.replace(FAST, stable_after=0.5, max_attempts=10)
    async with tailnet_node("queued", restart=policy) as node, \
            tailnet_node("knocker", restart=FAST) as knocker:
        listener = await node.listen(9520)
        for _ in range(6):
            dialed = await knocker.dial("queued", 9520)
            with trio.fail_after(10):
                while not listener.waiting:
                    await trio.sleep(0.01)
            gen = node._generation
            assert gen is not None
            events = node.events()

            async def helper_dies(gen: _generation.Generation = gen) -> None:
                gen.die("the test: the helper dies as accept() runs")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(helper_dies)
                # Either it takes the queued connection, or that went with its helper and it
                # waits for the next; it raised ClosedResourceError before the fix.
                with trio.move_on_after(2):
                    await (await listener.accept()).aclose()
            await dialed.aclose()
            await _restarted(node, events)
            assert not listener.closed
        # It still accepts.
        async def knock() -> None:
            await (await knocker.dial("queued", 9520)).aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(knock)
            with trio.fail_after(30):
                await (await listener.accept()).aclose()
        await listener.aclose()
