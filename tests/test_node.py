"""Two real nodes on a real local tailnet: streams, listeners, dialling, WhoIs."""

from __future__ import annotations

import hashlib
import os
import sys
from functools import partial

import pytest
import trio
import trio.testing

import tsproc
from tests.conftest import child_pids, fd_targets, open_fds

MiB = 1 << 20


async def echo_once(stream: tsproc.TailnetStream) -> None:
    async with stream:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)
        await stream.send_eof()


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    chunks = []
    while chunk := await stream.receive_some(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_echo_round_trip_by_short_name_and_by_ip(tailnet_node):
    async with tailnet_node("server") as server, tailnet_node("client") as client:
        listener = await server.listen(7)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, echo_once, [listener])
            for target in ("server", str(server.tailscale_ips[0])):
                stream = await client.dial(target, 7)
                assert stream.remote_addr == (str(server.tailscale_ips[0]), 7)
                assert stream.local_addr[0] == str(client.tailscale_ips[0])
                await stream.send_all(b"hello tailnet")
                await stream.send_eof()
                assert await read_all(stream) == b"hello tailnet"
                await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_64MiB_each_way_with_matching_sha256(tailnet_node):
    size = 64 * MiB
    async with tailnet_node("server") as server, tailnet_node("client") as client:
        listener = await server.listen(9000)
        payload_up = os.urandom(MiB) * (size // MiB)
        payload_down = os.urandom(MiB) * (size // MiB)
        results: dict[str, str] = {}

        async def send(stream: trio.abc.HalfCloseableStream, data: bytes) -> None:
            view = memoryview(data)
            for i in range(0, len(view), MiB):
                await stream.send_all(view[i : i + MiB])
            await stream.send_eof()

        async def receive(stream: trio.abc.ReceiveStream, key: str) -> None:
            h = hashlib.sha256()
            n = 0
            while chunk := await stream.receive_some(1 << 20):
                h.update(chunk)
                n += len(chunk)
            results[key] = h.hexdigest()
            results[key + "_n"] = str(n)

        async def serve_one() -> None:
            stream = await listener.accept()
            async with stream, trio.open_nursery() as n:
                n.start_soon(receive, stream, "server_got")
                n.start_soon(send, stream, payload_down)

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve_one)
                stream = await client.dial("server", 9000)
                async with stream, trio.open_nursery() as n:
                    n.start_soon(send, stream, payload_up)
                    n.start_soon(receive, stream, "client_got")
        assert results["server_got_n"] == str(size)
        assert results["client_got_n"] == str(size)
        assert results["server_got"] == hashlib.sha256(payload_up).hexdigest()
        assert results["client_got"] == hashlib.sha256(payload_down).hexdigest()


@pytest.mark.parametrize("first_to_close", ["client", "server"])
async def test_half_close_in_both_directions(tailnet_node, first_to_close):
    async with tailnet_node("server") as server, tailnet_node("client") as client:
        listener = await server.listen(8001)
        async with trio.open_nursery() as nursery:
            accepted = trio.Event()
            server_side: list[tsproc.TailnetStream] = []

            async def accept() -> None:
                server_side.append(await listener.accept())
                accepted.set()

            nursery.start_soon(accept)
            c = await client.dial("server", 8001)
            await accepted.wait()
            s = server_side[0]
            closer, other = (c, s) if first_to_close == "client" else (s, c)
            await closer.send_all(b"last words")
            await closer.send_eof()
            assert await read_all(other) == b"last words"
            # The half-closed side still receives: the other direction stays open.
            for i in range(3):
                await other.send_all(b"more %d;" % i)
            await other.send_eof()
            assert await read_all(closer) == b"more 0;more 1;more 2;"
            await c.aclose()
            await s.aclose()


@pytest.mark.parametrize("half_close_first", [False, True])
async def test_closing_a_stream_ends_the_tailnet_connection_at_once(tailnet_node,
                                                                    half_close_first):
    """A stream closed while its peer keeps its side open ends the tailnet connection now (the
    peer reads EOF), not when the peer next speaks. On Linux the helper sees a close itself
    (docs/protocol.md §6): the host says it with close_conn only after a half-close."""
    async with tailnet_node("server") as server, tailnet_node("client") as client:
        listener = await server.listen(8004)
        rpc = client._generation.rpc
        sent: list[str] = []
        notify = rpc.notify_nowait

        def recording(method: str, params: dict) -> None:
            sent.append(method)
            notify(method, params)

        rpc.notify_nowait = recording  # type: ignore[method-assign]
        with trio.fail_after(20):
            stream = await client.dial("server", 8004)
            await stream.send_all(b"request")
            peer = await listener.accept()
            assert await peer.receive_some(7) == b"request"
            if half_close_first:
                await stream.send_eof()
                assert await peer.receive_some(1) == b""
            await stream.aclose()
            assert await read_all(peer) == b""
            while (await client.status()).helper_conns:
                await trio.sleep(0.05)
        expected = ["close_conn"] if half_close_first or sys.platform != "linux" else []
        assert sent == expected
        await peer.aclose()
        await listener.aclose()


async def test_200_concurrent_connections_each_carrying_data(tailnet_node):
    n = 200
    async with tailnet_node("server") as server, tailnet_node("client") as client:
        listener = await server.listen(8002, backlog=256)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, echo_once, [listener])
            ok = []

            async def one(i: int) -> None:
                payload = (b"%05d" % i) * 4000  # 20 kB each
                stream = await client.dial("server", 8002)
                async with stream, trio.open_nursery() as inner:
                    inner.start_soon(partial(stream.send_all, payload))
                    got = b""
                    while len(got) < len(payload):
                        chunk = await stream.receive_some(65536)
                        assert chunk, "connection ended early"
                        got += chunk
                    assert got == payload
                    ok.append(i)

            with trio.fail_after(120):
                async with trio.open_nursery() as clients:
                    for i in range(n):
                        clients.start_soon(one, i)
            assert sorted(ok) == list(range(n))
            nursery.cancel_scope.cancel()


async def test_whois_on_an_accepted_stream_names_the_dialling_node(tailnet_node):
    async with tailnet_node("server") as server, tailnet_node("dialler") as client:
        listener = await server.listen(8003)
        async with trio.open_nursery() as nursery:
            got: list[tsproc.TailnetStream] = []

            async def accept() -> None:
                got.append(await listener.accept())

            nursery.start_soon(accept)
            stream = await client.dial("server", 8003)
        accepted = got[0]
        assert accepted.remote_addr[0] == str(client.tailscale_ips[0])
        who = await server.whois(accepted.remote_addr)
        assert who.node.hostname == "dialler"
        assert who.node.dns_name.startswith("dialler.")
        assert client.tailscale_ips[0] in who.node.tailscale_ips
        assert who.user.login_name
        # And the other way round, by plain IP.
        who_server = await client.whois(str(server.tailscale_ips[0]))
        assert who_server.node.hostname == "server"
        with pytest.raises(tsproc.NotFoundError):
            await server.whois("100.100.100.100")
        await stream.aclose()
        await accepted.aclose()


async def test_TailnetStream_pairs_pass_trio_half_closeable_stream_checks(tailnet_node):
    async with tailnet_node("server") as server, tailnet_node("client") as client:
        listener = await server.listen(8004, backlog=16)

        async def stream_maker() -> tuple[tsproc.TailnetStream, tsproc.TailnetStream]:
            async with trio.open_nursery() as nursery:
                got: list[tsproc.TailnetStream] = []

                async def accept() -> None:
                    got.append(await listener.accept())

                nursery.start_soon(accept)
                dialled = await client.dial("server", 8004)
            return dialled, got[0]

        with trio.fail_after(120):
            await trio.testing.check_half_closeable_stream(stream_maker, None)


async def test_serve_listeners_serves_a_handler(tailnet_node):
    async with tailnet_node("server") as server, tailnet_node("client") as client:
        listener = await server.listen(80)

        async def handler(stream: tsproc.TailnetStream) -> None:
            who = await server.whois(stream.remote_addr)
            await stream.send_all(f"hi {who.node.hostname}".encode())
            await stream.aclose()

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio.serve_listeners, handler, [listener])
            assert listeners == [listener]
            for _ in range(3):
                stream = await client.dial("server", 80)
                assert await read_all(stream) == b"hi client"
                await stream.aclose()
            nursery.cancel_scope.cancel()


async def greet(stream: tsproc.TailnetStream) -> None:
    """The README's handler: a module-level function that needs no node in scope."""
    who = await stream.whois()
    await stream.send_all(f"hello, {who.node.hostname}\n".encode())


async def test_serve_tcp_serves_a_handler_that_learns_its_caller_from_the_stream(tailnet_node):
    async with tailnet_node("server") as server, tailnet_node("client") as client:
        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(tsproc.serve_tcp, greet, server, 80)
            assert isinstance(listener, tsproc.TailnetListener) and listener.port == 80
            for _ in range(2):
                with trio.fail_after(30):
                    stream = await client.dial("server", 80)
                    assert await read_all(stream) == b"hello, client\n"
                await stream.aclose()
            # The dialling side can ask too.
            stream = await client.dial("server", 80)
            assert (await stream.whois()).node.hostname == "server"
            await stream.aclose()
            nursery.cancel_scope.cancel()
        assert listener.closed  # the port is free again
        await (await server.listen(80)).aclose()


async def test_closing_a_listener_wakes_a_blocked_accept(tailnet_node):
    async with tailnet_node("server") as server:
        listener = await server.listen(8005)
        errors = []

        async def accept() -> None:
            try:
                await listener.accept()
            except trio.ClosedResourceError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept)
            await trio.testing.wait_all_tasks_blocked()
            await listener.aclose()
        assert len(errors) == 1
        with pytest.raises(trio.ClosedResourceError):
            await listener.accept()
        # The port is free again on the helper's side.
        again = await server.listen(8005)
        await again.aclose()


async def test_listening_twice_on_a_port_is_a_typed_error(tailnet_node):
    async with tailnet_node("server") as server:
        listener = await server.listen(8006)
        with pytest.raises(tsproc.AddressInUseError):
            await server.listen(8006)
        await listener.aclose()


async def test_closing_a_node_leaves_no_helper_process_and_no_fd(tailnet, tailnet_node):
    before_fds = open_fds()
    before_children = child_pids()
    async with tailnet_node("server") as server, tailnet_node("client") as client:
        listener = await server.listen(8007)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, echo_once, [listener])
            streams = [await client.dial("server", 8007) for _ in range(5)]
            await streams[0].send_all(b"x")
            pids = {server.helper_pid, client.helper_pid}
            assert None not in pids
            assert pids <= child_pids()
            # Leave the streams open on purpose: closing the node must close them.
            nursery.cancel_scope.cancel()
    assert server.state is tsproc.NodeState.CLOSED
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), f"helper {pid} still exists (zombie?)"
    assert child_pids() <= before_children
    for stream in streams:
        await stream.aclose()
    leaked = open_fds() - before_fds
    assert not leaked, f"leaked fds: {fd_targets(leaked)}"
