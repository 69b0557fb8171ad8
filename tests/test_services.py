"""Node.listen_service: Tailscale Services on the local tailnet, which grants them as
Tailscale's control does (a VIP, a MagicDNS record, the service-host capability, the VIP as a
route of one host). Two tagged nodes host svc:web; a client reaches it by name; stopping the
host that answered leaves the other serving; closing the last listener withdraws it."""

from __future__ import annotations

import os
import signal

import pytest
import trio

import tsproc
from tsproc.testing import local_tailnet

PORT = 8080


async def serve_name(listener: tsproc.TailnetListener, name: bytes) -> None:
    """Answer every connection with *name*."""
    while True:
        try:
            stream = await listener.accept()
        except (trio.ClosedResourceError, tsproc.TsprocError):
            return
        async with stream:
            await stream.send_all(name)


async def ask(client: tsproc.Node, target: str) -> bytes | None:
    """Which host answers at *target*, or None if no host does (yet, or any more)."""
    try:
        with trio.fail_after(5):
            async with await client.dial(target, PORT) as stream:
                return await stream.receive_some(100) or None
    except (tsproc.DialError, trio.TooSlowError, trio.BrokenResourceError):
        return None


async def eventually(client: tsproc.Node, target: str, want: set[bytes | None],
                     timeout: float = 60) -> bytes | None:
    with trio.fail_after(timeout):
        while (got := await ask(client, target)) not in want:
            await trio.sleep(0.2)
    return got


@pytest.mark.offline
async def test_two_hosts_serve_a_service_and_one_keeps_serving_when_the_other_stops():
    async with local_tailnet() as tailnet, trio.open_nursery() as nursery:
        client = await nursery.start(_run_node, tailnet, "client", ())
        hosts = {}
        for name in ("web-a", "web-b"):
            node = await nursery.start(_run_node, tailnet, name, ("tag:web",))
            listener = await node.listen_service("svc:web", PORT)
            nursery.start_soon(serve_name, listener, name.encode())
            hosts[name.encode()] = (node, listener)
        suffix = (await client.status()).magic_dns_suffix
        await eventually(client, f"web.{suffix}", set(hosts))
        # The svc: spelling resolves too. Which host answers may still change while the second
        # host's advertisement reaches the client: the one that answered last is stopped.
        first = await eventually(client, "svc:web", set(hosts))
        # The host that answered stops: the service moves to the other one.
        node, listener = hosts.pop(first)
        await node.aclose()
        second = await eventually(client, "svc:web", set(hosts))
        assert second != first
        # Its listener closes: the service is withdrawn, and nobody answers.
        node, listener = hosts.pop(second)
        await listener.aclose()
        with trio.fail_after(60):  # until the tailnet routes the service nowhere
            while True:
                try:
                    with trio.fail_after(3):
                        await (await client.dial("svc:web", PORT)).aclose()
                except tsproc.DialError:
                    break
                except trio.TooSlowError:
                    pass  # still routed to the host, which no longer takes it
                await trio.sleep(0.2)
        nursery.cancel_scope.cancel()


async def _run_node(tailnet, name, tags, *, task_status=trio.TASK_STATUS_IGNORED):
    async with tailnet.node(name, tags=tags) as node:
        task_status.started(node)
        await trio.sleep_forever()


@pytest.mark.offline
async def test_listen_service_refuses_untagged_nodes_and_bad_names():
    async with local_tailnet() as tailnet, tailnet.node("plain") as plain, \
            tailnet.node("tagged", tags=["tag:web"]) as tagged:
        with trio.fail_after(10), pytest.raises(tsproc.UntaggedServiceHostError) as caught:
            await plain.listen_service("svc:web", PORT)
        assert "tagged" in str(caught.value)
        for bad in ("web", "svc:", "svc:Not_A_Label", "svc:-web"):
            with pytest.raises(tsproc.InvalidArgumentError):
                await tagged.listen_service(bad, PORT)
        # TLS needs certificates, which this tailnet does not issue: refused at once, and
        # nothing is left advertised (the same port is free below).
        with trio.fail_after(10), pytest.raises(tsproc.TlsUnavailableError):
            await tagged.listen_service("svc:web", PORT, terminate_tls=True)
        listener = await tagged.listen_service("svc:web", PORT)
        with pytest.raises(tsproc.AddressInUseError):
            await tagged.listen_service("svc:web", PORT)
        await listener.aclose()
        # Closed: the port is free for the service again.
        await (await tagged.listen_service("svc:web", PORT)).aclose()


@pytest.mark.offline
async def test_a_service_listener_survives_a_helper_restart():
    async with local_tailnet() as tailnet, trio.open_nursery() as nursery:
        client = await nursery.start(_run_node, tailnet, "client", ())
        host = await nursery.start(_run_node, tailnet, "web-host", ("tag:web",))
        listener = await host.listen_service("svc:web", PORT)
        nursery.start_soon(serve_name, listener, b"web-host")
        assert await eventually(client, "svc:web", {b"web-host"}) == b"web-host"
        events = host.events()
        os.kill(host.helper_pid, signal.SIGKILL)
        with trio.fail_after(60):
            async for event in events:
                if isinstance(event, tsproc.HelperRestartedEvent):
                    break
        # The new helper hosts it again (tsnet clears the old advertisement at its first Up).
        assert await eventually(client, "svc:web", {b"web-host"}) == b"web-host"
        nursery.cancel_scope.cancel()
