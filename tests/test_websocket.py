"""WebSockets over the tailnet: trio-websocket as it is on tsproc's streams and listeners, and
the tsproc.websocket helpers."""

from __future__ import annotations

import gc
import os

import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketRequest,
    WebSocketServer,
    wrap_client_stream,
)

import tsproc
from tests.conftest import open_fds
from tsproc.websocket import Peer, open_websocket, serve_websocket

BLOB = os.urandom(512 << 10)


async def echo(request: WebSocketRequest, *_: object) -> None:
    ws = await request.accept()
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except ConnectionClosed:
        pass


async def test_trio_websocket_as_is_on_a_TailnetListener_and_a_dialled_TailnetStream(
    tailnet_node,
):
    async with (
        tailnet_node("server") as server,
        tailnet_node("client") as client,
        trio.open_nursery() as nursery,
    ):
        listener = await server.listen(8080)
        await nursery.start(WebSocketServer(echo, [listener]).run)
        stream = await client.dial("server", 8080)
        async with trio.open_nursery() as conn_nursery:
            ws = await wrap_client_stream(conn_nursery, stream, "server:8080", "/echo")
            for message in ("hello", b"\x00binary", BLOB):
                await ws.send_message(message)
                assert await ws.get_message() == message
            await ws.aclose()
        nursery.cancel_scope.cancel()


async def test_helpers_echo_and_tell_the_handler_who_connected(tailnet_node):
    peers: list[Peer] = []

    async def handler(request: WebSocketRequest, peer: Peer) -> None:
        peers.append(peer)
        assert request.path == "/chat?room=1"
        await echo(request)

    async with (
        tailnet_node("server") as server,
        tailnet_node("client") as client,
        trio.open_nursery() as nursery,
    ):
        ws_server = await nursery.start(serve_websocket, handler, server, 8080)
        # What trio-websocket's server says of its socket listeners, it says of this one.
        assert ws_server.port == 8080
        assert ws_server.listeners == ["<TailnetListener tcp port=8080 backlog=128 0 waiting>"]
        assert "TailnetListener tcp port=8080" in repr(ws_server)
        async with open_websocket(client, "server", 8080, "/chat?room=1") as ws:
            for message in ("one", "two", BLOB):
                await ws.send_message(message)
                assert await ws.get_message() == message
        (peer,) = peers
        assert peer.addr[0] == str(client.tailscale_ips[0])
        assert peer.whois.node.hostname == "client"
        assert peer.whois == await server.whois(str(client.tailscale_ips[0]))
        nursery.cancel_scope.cancel()


async def test_server_initiated_close_ends_the_client_cleanly_without_leaking(tailnet_node):
    async def greet_and_close(request: WebSocketRequest, peer: Peer) -> None:
        ws = await request.accept()
        await ws.send_message(f"hi {peer.whois.node.hostname}")
        await ws.aclose(code=4000, reason="bye")

    async with (
        tailnet_node("server") as server,
        tailnet_node("client") as client,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(serve_websocket, greet_and_close, server, 8080)
        before = open_fds()
        for _ in range(5):
            async with open_websocket(client, "server", 8080, "/") as ws:
                assert await ws.get_message() == "hi client"
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason.code == 4000
        gc.collect()
        await trio.sleep(0.2)
        assert open_fds() - before == set(), "a closed WebSocket left its stream open"
        nursery.cancel_scope.cancel()


async def test_a_rejection_is_raised_bare_from_open_websocket(tailnet_node):
    async def refuse(request: WebSocketRequest, peer: Peer) -> None:
        await request.reject(403, body=b"not you")

    async with (
        tailnet_node("server") as server,
        tailnet_node("client") as client,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(serve_websocket, refuse, server, 8080)
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket(client, "server", 8080, "/"):
                pass
        assert rejected.value.status_code == 403
        assert rejected.value.body == b"not you"

        # The caller's own exception comes out bare too.
        await nursery.start(serve_websocket, echo, server, 8081)
        with pytest.raises(KeyError):
            async with open_websocket(client, "server", 8081, "/"):
                raise KeyError("mine")
        with pytest.raises(tsproc.DialError):
            async with open_websocket(client, "no-such-node", 8081, "/"):
                pass
        nursery.cancel_scope.cancel()
