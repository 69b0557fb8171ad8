"""`tsproc forward` and `tsproc proxy`: one line on stdout a script can use, until Ctrl-C."""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

import trio

import tsproc
from tests.test_cli import AUTH_KEY, TSPROC, Lines, cli_env, node_args
from tsproc.testing import local_tailnet


async def _echo(stream: tsproc.TailnetStream) -> None:
    async for data in stream:
        await stream.send_all(data)
    await stream.send_eof()


@asynccontextmanager
async def _command(nursery: trio.Nursery, argv: list[str]) -> AsyncIterator[str]:
    """Run `tsproc ARGV`; yield its first stdout line; Ctrl-C it (which must exit 0)."""
    proc = await trio.lowlevel.open_process(
        [*TSPROC, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=cli_env(TS_AUTHKEY=AUTH_KEY))
    out, err = Lines(), Lines()
    nursery.start_soon(out.pump, proc.stdout)
    nursery.start_soon(err.pump, proc.stderr)
    try:
        with trio.fail_after(60):
            while not out.lines:
                if proc.poll() is not None:
                    raise AssertionError("\n".join(err.lines))
                await trio.sleep(0.05)
        assert len(out.lines) == 1
        yield out.lines[0]
    finally:
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            assert await proc.wait() == 0, "\n".join(err.lines)


def _echo_through_socks(url: str) -> bytes:
    parts = urlsplit(url)
    assert parts.scheme == "socks5h" and parts.hostname == "127.0.0.1" and parts.port
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    with socket.create_connection(("127.0.0.1", parts.port), timeout=30) as s:
        s.sendall(b"\x05\x01\x02")
        assert s.recv(2) == b"\x05\x02"
        s.sendall(bytes([1, len(user)]) + user.encode() + bytes([len(password)])
                  + password.encode())
        assert s.recv(2) == b"\x01\x00"
        s.sendall(b"\x05\x01\x00\x03\x03web" + struct.pack(">H", 7))
        assert s.recv(10)[:2] == b"\x05\x00"
        s.sendall(b"through the proxy")
        s.shutdown(socket.SHUT_WR)
        return s.makefile("rb").read()


async def test_forward_and_proxy_print_their_endpoint_and_stop_on_ctrl_c():
    async with local_tailnet() as tailnet, tailnet.node("web") as web, \
            trio.open_nursery() as nursery:
        await nursery.start(tsproc.serve_tcp, _echo, web, 7)
        args = ["--hostname", "laptop", *node_args(tailnet.control_url)]
        async with _command(nursery, ["forward", "web:7", *args]) as line:
            path = Path(line)
            assert path.name == ".s.PGSQL.7"
            stream = await trio.open_unix_socket(line)
            async with stream:
                await stream.send_all(b"through the forward")
                await stream.send_eof()
                got = b""
                with trio.fail_after(30):
                    async for data in stream:
                        got += data
            assert got == b"through the forward"
        assert not path.exists() and not path.parent.exists()

        async with _command(nursery, ["proxy", "--port", "0", *args]) as url:
            got = await trio.to_thread.run_sync(_echo_through_socks, url)
            assert got == b"through the proxy"
        nursery.cancel_scope.cancel()
