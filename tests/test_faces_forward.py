"""Forwards and the SOCKS5 proxy from asyncio and from blocking code, on a real local tailnet:
the trio context is held in the node's thread for the face's ``async with`` / ``with``, and
the endpoint goes with it (and with a cancelled entry, and with the node)."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading

import httpx
import pytest

import tsproc
import tsproc.aio
import tsproc.blocking
from tests.faces import Snapshot

HELLO = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"


@pytest.fixture(scope="module")
def net():
    with tsproc.blocking.local_tailnet() as tailnet:
        yield tailnet


def aio_node(net, hostname: str) -> tsproc.aio.Node:
    return tsproc.aio.Node(hostname, control_url=net.control_url, ephemeral=True)


async def echo_or_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Port 7 echoes to the end; port 80 answers one HTTP request with 'hello'."""
    try:
        if writer.get_extra_info("sockname")[1] == 80:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(HELLO)
        else:
            writer.write(await reader.read())
        await writer.drain()
    finally:
        writer.close()


def test_forward_and_socks5_under_asyncio(net):
    async def main() -> None:
        async with aio_node(net, "afsrv") as server, aio_node(net, "afcli") as client, \
                await tsproc.aio.serve(echo_or_hello, server, 7), \
                await tsproc.aio.serve(echo_or_hello, server, 80):
            async with client.forward("afsrv", 7) as fwd:
                assert isinstance(fwd, tsproc.Forward) and fwd.path is not None
                reader, writer = await asyncio.open_unix_connection(fwd.path)
                writer.write(b"through the forward")
                writer.write_eof()
                assert await reader.read() == b"through the forward"
                writer.close()
            assert not fwd.path.exists()  # the endpoint went with the context
            async with client.forward("afsrv", 7, local_port=0) as fwd:
                reader, writer = await asyncio.open_connection(fwd.host, fwd.port)
                writer.write(b"over loopback")
                writer.write_eof()
                assert await reader.read() == b"over loopback"
                writer.close()
            async with client.socks5(local_port=0) as proxy, \
                    httpx.AsyncClient(proxy=proxy.url, timeout=30) as http:
                assert (await http.get("http://afsrv/")).text == "hello"

            # A cancelled entry leaves no endpoint behind; nor does a node that closes first.
            baseline = Snapshot.take()
            for delay in (0, 0.001, 0.01):
                try:
                    async with asyncio.timeout(delay):
                        async with client.forward("afsrv", 7):
                            pass
                except TimeoutError:
                    pass
            await baseline.await_nothing_leaked(polls=200)
            kept = client.forward("afsrv", 7)
            fwd = await kept.__aenter__()
        await kept.__aexit__(None, None, None)  # the node closed first: nothing to do
        assert not fwd.path.exists()

    asyncio.run(main())


def test_forward_and_socks5_from_blocking_code(net):
    with net.node("bfsrv") as server, net.node("bfcli") as client, server.listen(7) as listener:
        def echo_one() -> None:
            sock, _ = listener.accept(timeout=60)
            with sock:
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
                sock.sendall(data)

        with client.forward("bfsrv", 7, timeout=30) as fwd:
            serving = threading.Thread(target=echo_one, name="echo one")
            serving.start()
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(60)
                sock.connect(str(fwd.path))
                sock.sendall(b"through the forward")
                sock.shutdown(socket.SHUT_WR)
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
                assert data == b"through the forward"
            serving.join(60)
        assert not fwd.path.exists()

        with tsproc.blocking.ThreadingTailnetServer(server, 80, Hello) as httpd:
            serving = threading.Thread(target=httpd.serve_forever, name="hello")
            serving.start()
            try:
                with client.socks5(local_port=0) as proxy, \
                        httpx.Client(proxy=proxy.url, timeout=30) as http:
                    assert http.get("http://bfsrv/").text == "hello"
            finally:
                httpd.shutdown()
                serving.join()
        with pytest.raises(tsproc.NodeTimeoutError), client.forward("bfsrv", 7, timeout=1e-6):
            pass


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args: object) -> None:
        pass
