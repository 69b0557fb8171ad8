"""TailnetStream: closing a stream while another task waits for the helper's verdict on EOF.

Found by trio-websocket over tsproc: its reader task read EOF and waited for ``conn_end`` while
the task closing the WebSocket closed the stream, which made the node forget the connection,
so the verdict was dropped and the reader waited forever.
"""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from tsproc._core.streams import ConnState, TailnetStream


async def test_aclose_wakes_a_receiver_waiting_for_the_eof_verdict():
    ours, theirs = socket.socketpair()
    forgotten: list[int] = []
    stream = TailnetStream._create(ours.detach(), ConnState(7, 1), "100.64.0.1:1", "100.64.0.2:2",
                           on_close=lambda state, held, seen: forgotten.append(state.conn_id))
    theirs.close()  # EOF, and no conn_end will ever come
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def receive() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    await stream.receive_some()

            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()
            await stream.aclose()
    assert forgotten == [7]


async def test_close_now_wakes_it_too():
    ours, theirs = socket.socketpair()
    stream = TailnetStream._create(ours.detach(), ConnState(8, 1), "100.64.0.1:1", "100.64.0.2:2")
    theirs.close()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def receive() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    await stream.receive_some()

            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()
            stream.close_now()


async def test_a_clean_end_before_close_is_still_plain_eof():
    ours, theirs = socket.socketpair()
    state = ConnState(9, 1)
    stream = TailnetStream._create(ours.detach(), state, "100.64.0.1:1", "100.64.0.2:2")
    theirs.close()
    state.finish(True)
    assert await stream.receive_some() == b""
    await stream.aclose()
