"""Abortive ends reach the tailnet peer as a reset, never as an EOF that passes for a whole reply.

A peer that reads EOF takes what it got for complete. So a connection tsproc drops — reset by
the application (:meth:`TailnetStream.reset`), queued for an ``accept()`` that will never come
because the listener closed, or left open by a ``serve_tcp`` handler that failed — must make the
peer's read fail (docs/protocol.md §6). Each test checks the peer side on a real local tailnet.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import tsproc
from tests.conftest import open_fds


async def expect_reset(stream: tsproc.TailnetStream) -> bytes:
    """Read until the stream breaks; fail if it ends in an orderly EOF. Returns what came."""
    got = b""
    with trio.fail_after(30):
        try:
            while data := await stream.receive_some():
                got += data
        except trio.BrokenResourceError as exc:
            assert "reset" in str(exc), exc
            return got
    pytest.fail(f"read an orderly EOF after {got!r}, not a reset")


async def test_reset_after_the_peer_half_closed_reaches_it_as_a_reset(tailnet_node):
    # The shape of a proxy whose backend refused: the request has arrived, with its EOF.
    async with tailnet_node("server") as server, tailnet_node("client") as client:
        listener = await server.listen(80)
        before = open_fds()
        stream = await client.dial("server", 80)
        await stream.send_all(b"GET / HTTP/1.0\r\n\r\n")
        await stream.send_eof()
        accepted = await listener.accept()
        request = b""
        while data := await accepted.receive_some():
            request += data
        assert request == b"GET / HTTP/1.0\r\n\r\n"
        await accepted.reset()
        await accepted.reset()  # idempotent
        assert await expect_reset(stream) == b""
        await stream.aclose()
        # The duplicate of the fd the node kept until the helper's conn_reset is closed.
        with trio.fail_after(10):
            while open_fds() - before:
                await trio.sleep(0.05)
        await listener.aclose()


async def test_reset_while_both_sides_are_open_discards_nothing_already_delivered(tailnet_node):
    async with tailnet_node("server") as server, tailnet_node("client") as client:
        listener = await server.listen(81)
        stream = await client.dial("server", 81)
        accepted = await listener.accept()
        await accepted.send_all(b"partial reply")
        # Delivered before the reset: the peer has it, then the reset.
        with trio.fail_after(30):
            assert await stream.receive_some() == b"partial reply"
        await accepted.reset()
        assert await expect_reset(stream) == b""
        await accepted.aclose()  # a no-op after reset
        await stream.aclose()
        await listener.aclose()


async def test_connections_queued_for_accept_are_reset_when_the_listener_closes(tailnet_node):
    async with tailnet_node("server") as server, tailnet_node("client") as client:
        listener = await server.listen(82, backlog=4)
        streams = [await client.dial("server", 82) for _ in range(3)]
        for stream in streams:
            await stream.send_all(b"hello?")
        with trio.fail_after(30):
            while listener.waiting < 3:
                await trio.sleep(0.05)
        await listener.aclose()  # nobody accepted them
        for stream in streams:
            await expect_reset(stream)
            await stream.aclose()


async def half_then_fail(stream: tsproc.TailnetStream) -> None:
    await stream.receive_some()
    await stream.send_all(b"HTTP/1.0 200 OK\r\nContent-Length: 1000\r\n\r\nfirst part")
    raise RuntimeError("the handler failed half-way through its reply")


async def test_serve_tcp_resets_the_connection_of_a_failed_handler(tailnet_node):
    async with tailnet_node("server") as server, tailnet_node("client") as client:

        async def serve(task_status: trio.TaskStatus[None]) -> None:
            # The handler's failure ends serve_tcp (as in trio); it must not also cancel the
            # client below, whose read has to see the reset itself rather than be cut short
            # (and leave its stream for the GC).
            with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="half-way"),
                                    flatten_subgroups=True):
                async with trio.open_nursery() as nursery:
                    await nursery.start(tsproc.serve_tcp, half_then_fail, server, 83)
                    task_status.started()

        async with trio.open_nursery() as nursery:
            await nursery.start(serve)
            async with await client.dial("server", 83) as stream:
                await stream.send_all(b"GET / HTTP/1.0\r\n\r\n")
                got = await expect_reset(stream)
        # What the handler sent before it failed may or may not have left before the reset.
        assert got.startswith(b"HTTP/1.0 200 OK") or got == b""
