"""node.socks5(): httpx and curl reach a tailnet HTTP server through the SOCKS5 proxy, and what
the proxy refuses it refuses with RFC 1928's reply codes, before anything is dialled."""

from __future__ import annotations

import logging
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import httpx
import pytest
import trio

import tsproc


async def _http_hello(stream: tsproc.TailnetStream) -> None:
    request = b""
    while b"\r\n\r\n" not in request:
        data = await stream.receive_some()
        if not data:
            return
        request += data
    body = b"hello over the tailnet: " + request.split(b" ", 2)[1]
    await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                          + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
    await stream.send_eof()


def _curl(url: str, proxy_config: str) -> str:
    # The credential goes in curl's config on stdin, not in its argv.
    result = subprocess.run(["curl", "--silent", "--show-error", "--max-time", "30", "-K", "-",
                             url], input=proxy_config, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_httpx_and_curl_reach_a_tailnet_http_server(tailnet_node, caplog):
    caplog.set_level(logging.DEBUG)
    async with tailnet_node("web") as server, tailnet_node("client") as client, \
            trio.open_nursery() as nursery:
        await nursery.start(tsproc.serve_tcp, _http_hello, server, 80)
        async with client.socks5(local_port=0) as proxy:
            assert proxy.password not in repr(proxy)
            assert proxy.url.startswith("socks5h://tsproc:")
            async with httpx.AsyncClient(proxy=proxy.url, timeout=30) as http:
                response = await http.get("http://web/httpx")
            assert response.status_code == 200
            assert response.text == "hello over the tailnet: /httpx"
            if shutil.which("curl"):
                host, port = proxy.address
                config = (f'socks5-hostname = "{host}:{port}"\n'
                          f'proxy-user = "{proxy.username}:{proxy.password}"\n')
                text = await trio.to_thread.run_sync(_curl, "http://web/curl", config)
                assert text == "hello over the tailnet: /curl"
            helper_pid = client.helper_pid
            secret = proxy.password
            # Never in the helper's argv or environment.
            for name in ("cmdline", "environ"):
                assert secret.encode() not in Path(f"/proc/{helper_pid}/{name}").read_bytes()
        async with client.socks5() as proxy:
            assert proxy.path is not None and proxy.path.stat().st_mode & 0o777 == 0o600
            if shutil.which("curl"):
                # curl's form of a SOCKS proxy on a Unix socket (curl >= 7.84).
                config = f'proxy = "{proxy.url}"\n'
                text = await trio.to_thread.run_sync(_curl, "http://web/unix", config)
                assert text == "hello over the tailnet: /unix"
        # tsproc's own logs (the helper's included) never show it. (httpcore's DEBUG trace of
        # its SOCKS set-up does: that is the client's logging, not tsproc's.)
        ours = [r.getMessage() for r in caplog.records if r.name.startswith("tsproc")]
        assert ours and not [m for m in ours if secret in m]
        nursery.cancel_scope.cancel()


def _socks_connect(address: tuple[str, int], user: str, password: str,
                   host: str, port: int) -> tuple[int, int | None]:
    """A SOCKS5 CONNECT by hand: (the credential status, the reply code or None)."""
    with socket.create_connection(address, timeout=30) as s:
        s.sendall(b"\x05\x01\x02")
        assert s.recv(2) == b"\x05\x02"
        s.sendall(bytes([1, len(user)]) + user.encode() + bytes([len(password)])
                  + password.encode())
        status = s.recv(2)
        assert status[0] == 1
        if status[1] != 0:
            assert s.recv(1) == b"", "the proxy must close after a refused credential"
            return status[1], None
        s.sendall(b"\x05\x01\x00\x03" + bytes([len(host)]) + host.encode()
                  + struct.pack(">H", port))
        reply = s.recv(10)
        assert len(reply) == 10 and reply[0] == 5, reply
        return 0, reply[1]


@pytest.mark.offline
async def test_refusals_carry_the_right_reply_code(tailnet_node):
    async with tailnet_node("web") as server, tailnet_node("client") as client, \
            trio.open_nursery() as nursery:
        await nursery.start(tsproc.serve_tcp, _http_hello, server, 80)
        async with client.socks5(local_port=0) as proxy:
            address = proxy.address
            assert isinstance(address, tuple)

            def ask(host: str, port: int = 80, password: str | None = None) -> tuple:
                return _socks_connect(address, proxy.username,
                                      proxy.password if password is None else password,
                                      host, port)

            assert await trio.to_thread.run_sync(ask, "web") == (0, 0)
            assert await trio.to_thread.run_sync(
                lambda: ask("web", password="wrong")) == (1, None)
            # Off the tailnet: "connection not allowed by ruleset", nothing dialled or resolved.
            assert await trio.to_thread.run_sync(ask, "198.51.100.7") == (0, 2)
            assert await trio.to_thread.run_sync(ask, "db.example.invalid") == (0, 2)
            # A tailnet name no node has: "host unreachable".
            assert await trio.to_thread.run_sync(ask, "nosuchnode") == (0, 4)
            # A node that is there, on a port nobody serves: "connection refused".
            assert await trio.to_thread.run_sync(ask, "web", 81) == (0, 5)
        nursery.cancel_scope.cancel()


async def test_bad_input_fails_at_socks5_time(tailnet_node, tmp_path: Path):
    async with tailnet_node("client") as client:
        with pytest.raises(tsproc.InvalidArgumentError, match="already exists"):
            async with client.socks5(unix_dir=tmp_path):
                pass
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            with pytest.raises(tsproc.AddressInUseError):
                async with client.socks5(local_port=taken.getsockname()[1]):
                    pass
        with pytest.raises(tsproc.InvalidArgumentError, match="local_port"):
            async with client.socks5(local_port=65536):
                pass
