"""httpx over the tailnet (tsproc.httpx) against a small h11 server on a TailnetListener, so
the server side can count the connections it accepts."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import h11
import httpx
import pytest
import trio

import tsproc
from tsproc.httpx import TailnetTransport

MiB = 1 << 20
BIG = os.urandom(MiB) * 10  # 10 MiB, streamed in 64 KiB pieces


@dataclass
class Server:
    accepted: int = 0
    requests: list[tuple[str, str, bytes]] = field(default_factory=list)
    close_after_each: bool = False


async def _send(stream: trio.abc.Stream, conn: h11.Connection, event: h11.Event) -> None:
    data = conn.send(event)
    if data:
        await stream.send_all(data)


async def serve_h11(server: Server, stream: tsproc.TailnetStream) -> None:
    """HTTP/1.1 with keep-alive: GET / → hello, POST /echo → the body, GET /big → 10 MiB."""
    server.accepted += 1
    conn = h11.Connection(h11.SERVER)
    async with stream:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                method, target = event.method.decode(), event.target.decode()
                body = b""
                while True:
                    part = conn.next_event()
                    if part is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(part, h11.Data):
                        body += part.data
                    elif isinstance(part, h11.EndOfMessage):
                        break
                server.requests.append((method, target, body))
                if target == "/big":
                    payload = BIG
                elif target == "/echo":
                    payload = body
                else:
                    payload = f"hello {method} {target}".encode()
                await _send(stream, conn, h11.Response(
                    status_code=200, headers=[("Content-Length", str(len(payload)))]))
                view = memoryview(payload)
                for i in range(0, len(view), 65536):
                    await _send(stream, conn, h11.Data(data=view[i : i + 65536]))
                await _send(stream, conn, h11.EndOfMessage())
                if server.close_after_each or conn.our_state is not h11.DONE:
                    return  # closes without a `Connection: close` header: the client must notice
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                return


async def test_get_post_stream_10MiB_and_keepalive_on_one_connection(tailnet_node):
    async with (
        tailnet_node("web") as web,
        tailnet_node("client") as client_node,
        trio.open_nursery() as nursery,
    ):
        server = Server()
        listener = await web.listen(80)
        nursery.start_soon(trio.serve_listeners, lambda s: serve_h11(server, s), [listener])
        async with httpx.AsyncClient(transport=TailnetTransport(client_node)) as client:
            got = await client.get("http://web/hello")
            assert got.status_code == 200
            assert got.text == "hello GET /hello"
            # The response knows the tailnet connection it came over.
            tailnet_stream = got.extensions["network_stream"].get_extra_info("tailnet_stream")
            assert isinstance(tailnet_stream, tsproc.TailnetStream)
            assert tailnet_stream.remote_addr == (str(web.tailscale_ips[0]), 80)

            posted = await client.post("http://web/echo", content=b"x" * 100_000)
            assert posted.content == b"x" * 100_000
            assert server.requests[-1][:2] == ("POST", "/echo")

            sha, chunks, size = hashlib.sha256(), 0, 0
            async with client.stream("GET", "http://web/big") as response:
                assert response.headers["content-length"] == str(len(BIG))
                async for chunk in response.aiter_bytes():
                    sha.update(chunk)
                    chunks += 1
                    size += len(chunk)
            assert size == len(BIG)
            assert sha.hexdigest() == hashlib.sha256(BIG).hexdigest()
            assert chunks > 10  # streamed, not one buffered blob

            for i in range(10):
                response = await client.get(f"http://web/n/{i}")
                assert response.text == f"hello GET /n/{i}"
        assert len(server.requests) == 13
        assert server.accepted == 1, "keep-alive: every request on the one connection"
        nursery.cancel_scope.cancel()


async def test_full_magicdns_name_and_ip_urls(tailnet_node):
    async with (
        tailnet_node("web") as web,
        tailnet_node("client") as client_node,
        trio.open_nursery() as nursery,
    ):
        server = Server()
        listener = await web.listen(8080)
        nursery.start_soon(trio.serve_listeners, lambda s: serve_h11(server, s), [listener])
        status = await web.status()
        async with httpx.AsyncClient(transport=TailnetTransport(client_node)) as client:
            for host in (status.dns_name.rstrip("."), str(web.tailscale_ips[0])):
                response = await client.get(f"http://{host}:8080/x")
                assert response.text == "hello GET /x"
        nursery.cancel_scope.cancel()


async def test_a_connection_the_server_closed_is_not_reused(tailnet_node):
    async with (
        tailnet_node("web") as web,
        tailnet_node("client") as client_node,
        trio.open_nursery() as nursery,
    ):
        server = Server(close_after_each=True)
        listener = await web.listen(80)
        nursery.start_soon(trio.serve_listeners, lambda s: serve_h11(server, s), [listener])
        async with httpx.AsyncClient(transport=TailnetTransport(client_node)) as client:
            for _ in range(3):
                assert (await client.get("http://web/")).status_code == 200
                await trio.sleep(0.2)  # let the server's close arrive
        assert server.accepted == 3
        nursery.cancel_scope.cancel()


async def test_unknown_host_is_a_ConnectError(tailnet_node):
    async with (
        tailnet_node("client") as client_node,
        httpx.AsyncClient(transport=TailnetTransport(client_node)) as client,
    ):
        with pytest.raises(httpx.ConnectError):
            await client.get("http://no-such-node/")
        with pytest.raises(httpx.ConnectError):  # nobody listens on that port
            await client.get(f"http://{client_node.tailscale_ips[0]}:81/")
