"""`tsproc demo`: a local tailnet, two nodes, HTTP from one to the other.

It prints three things: the HTTP response the client got, who the server saw on the other end
(WhoIs, from the tailnet's own identity, not anything the client claimed), and the transfer rate
of a bulk download through the tailnet.
"""

from __future__ import annotations

import time

import trio

from .._core.node import Node
from .._core.streams import TailnetStream
from .._core.types import WhoIs
from ..testing import local_tailnet

_BULK_BYTES = 64 << 20
_CHUNK = b"\0" * (256 << 10)


async def _read_request(stream: TailnetStream) -> str:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0].decode("latin-1")


async def _serve_http(server: Node, stream: TailnetStream, seen: list[WhoIs]) -> None:
    async with stream:
        request_line = await _read_request(stream)
        who = await server.whois(stream.remote_addr)
        seen.append(who)
        if request_line.startswith("GET /bulk "):
            head = (f"HTTP/1.1 200 OK\r\nContent-Length: {_BULK_BYTES}\r\n"
                    "Connection: close\r\n\r\n")
            await stream.send_all(head.encode())
            for _ in range(_BULK_BYTES // len(_CHUNK)):
                await stream.send_all(_CHUNK)
        else:
            body = (f"hello from {server.hostname}; you are {who.node.hostname} "
                    f"({who.user.login_name})\n").encode()
            head = (f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                    f"Content-Length: {len(body)}\r\nX-Tailnet-Peer: {who.node.dns_name}\r\n"
                    "Connection: close\r\n\r\n")
            await stream.send_all(head.encode() + body)
        await stream.send_eof()


async def _fetch(client: Node, host: str, path: str) -> tuple[bytes, bytes, float]:
    """GET http://host/path over the tailnet: (head, body, seconds)."""
    started = time.perf_counter()
    async with await client.dial(host, 80) as stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await stream.send_eof()
        chunks = []
        while chunk := await stream.receive_some(1 << 20):
            chunks.append(chunk)
    data = b"".join(chunks)
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body, time.perf_counter() - started


async def run_demo() -> None:
    """Run the demo end to end and print its three lines."""
    print("starting a local tailnet (control server, DERP, STUN on 127.0.0.1) …", flush=True)
    async with (
        local_tailnet() as tailnet,
        tailnet.node("demo-server") as server,
        tailnet.node("demo-client") as client,
        trio.open_nursery() as nursery,
    ):
        print(f"demo-server is {server.tailscale_ips[0]}, demo-client is "
              f"{client.tailscale_ips[0]}", flush=True)
        listener = await server.listen(80)

        seen: list[WhoIs] = []

        async def handle(stream: TailnetStream) -> None:
            await _serve_http(server, stream, seen)

        nursery.start_soon(trio.serve_listeners, handle, [listener])

        head, body, _ = await _fetch(client, "demo-server", "/")
        status = head.split(b"\r\n", 1)[0].decode()
        print(f"response: {status} — {body.decode().strip()}")

        who = seen[0]
        print(f"whois: demo-server sees the client as node {who.node.dns_name!r} "
              f"(host {who.node.hostname!r}, user {who.user.login_name!r}, "
              f"addresses {', '.join(str(ip) for ip in who.node.tailscale_ips)})")

        _, bulk, seconds = await _fetch(client, "demo-server", "/bulk")
        rate = len(bulk) / seconds / (1 << 20)
        print(f"transfer: {len(bulk) >> 20} MiB over the tailnet in {seconds:.2f} s "
              f"= {rate:.0f} MiB/s")
        nursery.cancel_scope.cancel()
