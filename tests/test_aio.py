"""tsproc.aio on a real local tailnet: asyncio streams, serve(), ASGI, events, cancellation, and
the promises (honest EOF after a helper SIGKILL, nothing leaked on close, Ctrl-C).

The tests are plain functions that call ``asyncio.run`` (pytest-trio owns ``async def`` tests
here); the local tailnet runs in a trio thread of its own (``tsproc.blocking.local_tailnet``).
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading

import pytest

import tsproc
import tsproc.aio
import tsproc.blocking
from tests.faces import Script, Snapshot, akill_mid_read, check_ctrl_c, kill


@pytest.fixture(scope="module")
def net():
    with tsproc.blocking.local_tailnet() as tailnet:
        yield tailnet


def aio_node(net, hostname: str, **kwargs) -> tsproc.aio.Node:
    """A node on the module's tailnet. Tests start the node that is dialled first: a node's
    first netmap has every node that joined before it, a later one only after an update."""
    return tsproc.aio.Node(hostname, control_url=net.control_url, ephemeral=True, **kwargs)


def test_dial_serve_whois_status_events_and_half_close(net):
    async def main() -> None:
        async with aio_node(net, "aserver") as server, aio_node(net, "aclient") as client:
            async def echo(reader: asyncio.StreamReader,
                           writer: tsproc.aio.TailnetStreamWriter) -> None:
                who = await server.whois(writer.remote_addr)
                writer.write(f"hello {who.node.hostname}\n".encode())
                writer.write(await reader.read())  # to the caller's EOF (its half-close)
                writer.write_eof()
                await writer.drain()
                writer.close()
                await writer.wait_closed()

            async with await tsproc.aio.serve(echo, server, 7) as tcp:
                assert tcp.is_serving()
                reader, writer = await client.dial("aserver", 7)
                assert writer.get_extra_info("peername") == writer.remote_addr
                assert writer.remote_addr[1] == 7
                writer.write(b"ping over the tailnet")
                await writer.drain()
                writer.write_eof()
                assert await reader.read() == b"hello aclient\nping over the tailnet"
                assert reader.at_eof()
                writer.close()
                await writer.wait_closed()
                # Closed here before the peer ended: a read says so, it does not look like EOF.
                reader, writer = await client.dial("aserver", 7)
                writer.close()
                await writer.wait_closed()
                with pytest.raises(ConnectionAbortedError):
                    await reader.read()
            assert not tcp.is_serving()

            status = await client.status()
            assert status.backend_state == "Running"
            assert any(peer.hostname == "aserver" for peer in status.peers)
            who = await server.whois(str(client.tailscale_ips[0]))
            assert who.node.hostname == "aclient"
            with pytest.raises(tsproc.DialError):
                await client.dial("no-such-node", 7)
            with pytest.raises(tsproc.AddressInUseError):
                async with await tsproc.aio.serve(echo, server, 8), \
                        await tsproc.aio.serve(echo, server, 8):
                    pass
        assert server.state is tsproc.NodeState.CLOSED

    asyncio.run(main())


def test_events_end_when_the_node_closes(net):
    async def main() -> list[object]:
        seen: list[object] = []
        async with aio_node(net, "aevents") as node:
            events = node.events()

            async def consume() -> None:
                async for event in events:
                    seen.append(event)

            consumer = asyncio.create_task(consume())
            await node.status()
            kill(node.helper_pid)  # a restart: state events and HelperRestartedEvent
            async with asyncio.timeout(90):
                while not any(isinstance(e, tsproc.HelperRestartedEvent) for e in seen):
                    await asyncio.sleep(0.05)
        async with asyncio.timeout(30):
            await consumer  # the iterator ended with the node
        return seen

    seen = asyncio.run(main())
    assert any(isinstance(e, tsproc.StateEvent) for e in seen)


def test_helper_sigkill_mid_read_raises_not_eof(net):
    async def main() -> None:
        async with aio_node(net, "asource") as source, aio_node(net, "avictim") as victim:
            sent = asyncio.Event()

            async def talker(reader: asyncio.StreamReader,
                             writer: tsproc.aio.TailnetStreamWriter) -> None:
                writer.write(b"first half")
                await writer.drain()
                sent.set()
                await reader.read()  # hold the connection open
                writer.close()

            async with await tsproc.aio.serve(talker, source, 7):
                reader, writer = await victim.dial("asource", 7)
                assert await reader.readexactly(10) == b"first half"
                await akill_mid_read(victim.helper_pid, reader)
                writer.close()

    asyncio.run(main())


def test_cancelled_dials_leak_nothing(net):
    """asyncio.timeout cancels the trio-side dial; a connection made anyway is closed."""

    async def main() -> None:
        async with aio_node(net, "atarget") as target, aio_node(net, "acancel") as node:
            accepted: list[tsproc.aio.TailnetStreamWriter] = []

            async def keep(reader: asyncio.StreamReader,
                           writer: tsproc.aio.TailnetStreamWriter) -> None:
                accepted.append(writer)
                await reader.read()  # the dialler's close (or its node's cancel) ends it
                writer.close()

            async with await tsproc.aio.serve(keep, target, 7):
                _, writer = await node.dial("atarget", 7)  # warm: the path is up
                writer.close()
                await writer.wait_closed()
                baseline = Snapshot.take()
                for delay in (0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05):
                    try:
                        async with asyncio.timeout(delay):
                            _, writer = await node.dial("atarget", 7)
                    except TimeoutError:
                        continue
                    writer.close()
                    await writer.wait_closed()
                async with asyncio.timeout(60):  # every bridged conn of this node closed
                    while node._runtime.conns:
                        await asyncio.sleep(0.05)
                await baseline.await_nothing_leaked()

    asyncio.run(main())


def test_node_close_leaves_no_thread_fd_or_process(net):
    before = Snapshot.take()

    async def main() -> None:
        # `node` is left first: its streams end while their peer is still there.
        async with aio_node(net, "aother") as other, aio_node(net, "aclosing") as node:
            async def hold(reader: asyncio.StreamReader,
                           writer: tsproc.aio.TailnetStreamWriter) -> None:
                writer.write(b"bye")
                try:
                    await reader.read()
                except ConnectionError:
                    pass  # the dialling node went away
                finally:
                    writer.close()

            server = await tsproc.aio.serve(hold, other, 7)
            reader, writer = await node.dial("aother", 7)
            assert await reader.readexactly(3) == b"bye"
            assert "tsproc node aclosing" in {t.name for t in threading.enumerate()}
        # Closing the node ended the stream: the reader raises, it does not read a clean EOF.
        with pytest.raises(ConnectionError):
            async with asyncio.timeout(30):
                await reader.read()
        writer.close()
        assert not server.is_serving()

    asyncio.run(main())
    before.assert_nothing_leaked()


def test_asgi_app_sees_the_callers_identity(net):
    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        who = scope["extensions"]["tsproc.whois"]
        body = json.dumps({"client": list(scope["client"]), "login": who["login_name"],
                           "hostname": who["hostname"],
                           "forged": [k.decode() for k, _ in scope["headers"]
                                      if k.lower().startswith(b"tailscale")]}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def main() -> dict:
        async with aio_node(net, "aweb") as web, aio_node(net, "avisitor") as visitor:
            started = asyncio.get_running_loop().create_future()
            stop = asyncio.Event()
            serving = asyncio.create_task(tsproc.aio.serve_asgi(
                app, web, 80, shutdown_trigger=stop.wait, on_started=started.set_result))
            assert await started == "http://aweb:80/"
            reader, writer = await visitor.dial("aweb", 80)
            writer.write(b"GET / HTTP/1.1\r\nHost: aweb\r\nTailscale-User-Login: root\r\n"
                         b"Connection: close\r\n\r\n")
            response = await reader.read()
            writer.close()
            stop.set()
            async with asyncio.timeout(60):
                await serving
            head, _, body = response.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            return {**json.loads(body), "visitor_ip": str(visitor.tailscale_ips[0])}

    result = asyncio.run(main())
    assert result["client"][0] == result["visitor_ip"]
    assert result["hostname"] == "avisitor"
    assert result["forged"] == []


def _blocks_sigint(status_path: str) -> bool:
    """Whether the thread or process whose /proc status file this is blocks SIGINT."""
    with open(status_path) as f:
        sigblk = next(line for line in f if line.startswith("SigBlk:"))
    return bool(int(sigblk.split()[1], 16) >> (signal.SIGINT - 1) & 1)


def test_sigint_goes_to_the_callers_threads_not_the_nodes(net):
    # The kernel gives a process-directed SIGINT to any thread that does not block it. Given to
    # the node's trio thread, it woke no one: a main thread asleep in asyncio's select() slept
    # on, and Ctrl-C did nothing (1 run in 8 of the Ctrl-C tests below). So that thread blocks
    # it, and the helpers it forks must not start with it blocked (Go's runtime unblocks the
    # signals it handles anyway; fork_child clears the mask for any child).
    async def main() -> tuple[bool, bool, bool]:
        async with aio_node(net, "asigmask") as node:
            thread = next(t for t in threading.enumerate() if t.name == "tsproc node asigmask")
            return (_blocks_sigint(f"/proc/self/task/{thread.native_id}/status"),
                    _blocks_sigint(f"/proc/{node.helper_pid}/status"),
                    _blocks_sigint(f"/proc/self/task/{threading.get_native_id()}/status"))

    node_thread, helper, caller = asyncio.run(main())
    assert (node_thread, helper, caller) == (True, False, False)


CTRL_C_SCRIPT = """
import asyncio, sys, tsproc.aio

async def main():
    async with tsproc.aio.Node("actrlc", control_url=sys.argv[1], ephemeral=True) as node:
        print("helper:", node.helper_pid, flush=True)
        server = await tsproc.aio.serve(lambda r, w: None, node, 7)
        print("ready:", flush=True)
        if sys.argv[2] == "serve_forever":
            await server.serve_forever()
        else:
            async for event in node.events():  # a call waiting in the trio thread
                pass

asyncio.run(main())
"""


@pytest.mark.parametrize("blocked_in", ["serve_forever", "events"])
def test_ctrl_c_under_asyncio_run_exits_with_keyboardinterrupt(net, blocked_in):
    check_ctrl_c(Script(CTRL_C_SCRIPT, net.control_url, blocked_in))
