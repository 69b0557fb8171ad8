"""RpcChannel requests that carry an fd (``forward`` passes a listening socket): the fd goes
with its frame, the channel keeps no copy once it is sent, and a frame it never sends takes its
fd copy with it."""

from __future__ import annotations

import array
import os
import socket

import trio
import trio.testing

from tests.conftest import fd_targets, open_fds
from tsproc._wire import protocol as proto
from tsproc._wire.rpc import RpcChannel


def _receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    data, ancdata, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(4 * 4))
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds += array.array("i", payload[:usable]).tolist()
    return data, fds


async def test_a_request_fd_travels_with_its_frame_and_the_caller_keeps_its_own():
    host_end, helper_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    r, w = os.pipe()
    rpc = RpcChannel(trio.socket.from_stdlib_socket(host_end), lambda msg: None)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rpc.serve)
            rpc.notify_nowait("grant", {"listener": 1, "n": 1})  # a plain frame before it
            answers: list[proto.Message] = []

            async def call() -> None:
                answers.append(await rpc.request("forward", {"kind": "tcp"}, fd=w))

            nursery.start_soon(call)
            decoder = proto.Decoder()
            got: list[proto.Message] = []
            with trio.fail_after(10):
                while len(got) < 2:
                    data, fds = await trio.to_thread.run_sync(_receive, helper_end)
                    decoder.receive_data(data, fds)
                    while (msg := decoder.next_message()) is not None:
                        got.append(msg)
            grant, forward = got
            assert isinstance(grant, proto.Notification) and grant.fd is None
            assert isinstance(forward, proto.Request) and forward.method == "forward"
            assert forward.params == {"kind": "tcp", "fd": True}
            assert forward.fd is not None and forward.fd != w
            # The helper's copy is the same pipe: what it writes, the caller's reader reads.
            os.write(forward.fd, b"same pipe")
            os.close(forward.fd)
            assert os.read(r, 100) == b"same pipe"
            helper_end.sendall(proto.encode_response(forward.id, None, {"forward": 1}))
            with trio.fail_after(10):
                while not answers:
                    await trio.sleep(0.01)
            # The channel's duplicate is closed once sent; the caller's w is still open.
            assert _copies_of(w) == 2
            os.fstat(w)
            rpc.close()
    finally:
        helper_end.close()
        host_end.close()
        os.close(r)
        os.close(w)


def _copies_of(fd: int) -> int:
    """How many of this process's fds name the same pipe as *fd*."""
    target = os.readlink(f"/proc/self/fd/{fd}")
    return sum(t == target for t in fd_targets(open_fds()).values())


async def test_a_request_fd_the_channel_never_sends_is_closed():
    host_end, helper_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    r, w = os.pipe()
    rpc = RpcChannel(trio.socket.from_stdlib_socket(host_end), lambda msg: None)
    try:
        assert _copies_of(w) == 2  # r and w
        # No writer task runs: the frame and its fd's duplicate wait in the outbox, until the
        # channel fails.
        errors: list[Exception] = []
        async with trio.open_nursery() as nursery:

            async def call() -> None:
                try:
                    await rpc.request("forward", {"kind": "tcp"}, fd=w)
                except Exception as exc:  # the channel failed under it
                    errors.append(exc)

            nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            assert _copies_of(w) == 3  # the duplicate, queued
            rpc.close()
        assert errors
        assert _copies_of(w) == 2
    finally:
        helper_end.close()
        host_end.close()
        os.close(r)
        os.close(w)
