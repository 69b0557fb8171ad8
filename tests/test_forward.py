"""node.forward(): code that opens its own sockets (psycopg, asyncpg) reaches the tailnet.

A real PostgreSQL server (tests/postgres.py) runs on this machine behind a tailnet node that
serves port 5432 on the local tailnet; a second node forwards a local endpoint to it, and the
drivers connect to that endpoint as to any PostgreSQL.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest
import trio

import tsproc
from tests.postgres import Postgres, running_postgres

ROWS = 10_000


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with running_postgres() as pg:
        yield pg


async def _pipe(src: trio.abc.Stream, dst: trio.abc.HalfCloseableStream) -> None:
    async for data in src:
        await dst.send_all(data)
    await dst.send_eof()


async def serve_postgres(server: tsproc.Node, pg: Postgres, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the PostgreSQL socket on the server node's tailnet port 5432."""

    async def handler(stream: tsproc.TailnetStream) -> None:
        backend = await trio.open_unix_socket(str(pg.socket_path))
        async with backend, trio.open_nursery() as nursery:
            nursery.start_soon(_pipe, stream, backend)
            nursery.start_soon(_pipe, backend, stream)

    await tsproc.serve_tcp(handler, server, pg.port, task_status=task_status)


def _rows() -> list[tuple[int, str]]:
    return [(i, hashlib.sha256(str(i).encode()).hexdigest()) for i in range(ROWS)]


def _checksum(rows: list[tuple[int, str]]) -> str:
    return hashlib.md5("".join(p for _, p in rows).encode()).hexdigest()


def psycopg_round_trip(host: str, port: int, table: str) -> None:
    rows = _rows()
    with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres",
                         connect_timeout=20) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, payload text NOT NULL)")
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} VALUES (%s, %s)", rows)
        got = conn.execute(f"SELECT id, payload FROM {table} ORDER BY id").fetchall()
        server_sum = conn.execute(
            f"SELECT md5(string_agg(payload, '' ORDER BY id)) FROM {table}").fetchone()
    assert got == rows
    assert server_sum == (_checksum(rows),)


def asyncpg_round_trip(host: str, port: int, table: str) -> None:
    rows = _rows()

    async def main() -> None:
        conn = await asyncpg.connect(host=host, port=port, user="postgres",
                                     database="postgres", timeout=20)
        try:
            await conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, payload text)")
            await conn.copy_records_to_table(table, records=rows)
            got = await conn.fetch(f"SELECT id, payload FROM {table} ORDER BY id")
            server_sum = await conn.fetchval(
                f"SELECT md5(string_agg(payload, '' ORDER BY id)) FROM {table}")
        finally:
            await conn.close()
        assert [tuple(r) for r in got] == rows
        assert server_sum == _checksum(rows)

    asyncio.run(main())


@pytest.mark.parametrize("endpoint", ["unix", "tcp"])
async def test_forward_carries_psycopg_and_asyncpg_to_a_real_postgres(
        tailnet_node, postgres, endpoint):
    async with tailnet_node("db") as server, tailnet_node("app") as client, \
            trio.open_nursery() as nursery:
        await nursery.start(serve_postgres, server, postgres)
        options = {"local_port": 0} if endpoint == "tcp" else {}
        async with client.forward("db", postgres.port, **options) as fwd:
            if endpoint == "unix":
                assert fwd.path is not None
                assert fwd.path.name == f".s.PGSQL.{postgres.port}"
                assert fwd.host == str(fwd.path.parent) and fwd.port == postgres.port
                assert fwd.path.parent.stat().st_mode & 0o777 == 0o700
                assert fwd.path.stat().st_mode & 0o777 == 0o600
            else:
                assert fwd.path is None and fwd.host == "127.0.0.1" and fwd.port > 0
            await trio.to_thread.run_sync(psycopg_round_trip, fwd.host, fwd.port,
                                          f"psycopg_{endpoint}")
            await trio.to_thread.run_sync(asyncpg_round_trip, fwd.host, fwd.port,
                                          f"asyncpg_{endpoint}")
            path = fwd.path
        # Gone with the context: the file and its directory, or the port.
        if path is not None:
            assert not path.exists() and not path.parent.exists()
        else:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", fwd.port), timeout=5).close()
        assert fwd.closed
        nursery.cancel_scope.cancel()


def _query_until_killed(host: str, port: int) -> BaseException | None:
    """A query whose rows stop coming halfway: what the client sees when the helper dies."""
    with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres",
                         connect_timeout=20) as conn:
        try:
            conn.execute("SELECT i, repeat('x', 200), pg_sleep(CASE WHEN i = 5000 THEN 60 "
                         "ELSE 0 END) FROM generate_series(1, 10000) i").fetchall()
        except psycopg.OperationalError as exc:
            return exc
    return None


def _select_one(host: str, port: int) -> int:
    with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres",
                         connect_timeout=60) as conn:
        row = conn.execute("SELECT 41 + 1").fetchone()
    assert row is not None
    return int(row[0])


async def test_helper_killed_mid_query_is_a_connection_error_and_the_forward_lives_on(
        tailnet_node, postgres):
    async with tailnet_node("db") as server, tailnet_node("app") as client, \
            trio.open_nursery() as nursery:
        await nursery.start(serve_postgres, server, postgres)
        async with client.forward("db", postgres.port) as fwd:
            outcome: list[BaseException | None] = []

            async def query() -> None:
                outcome.append(await trio.to_thread.run_sync(
                    _query_until_killed, fwd.host, fwd.port, abandon_on_cancel=True))

            nursery.start_soon(query)
            # The query is running once its backend shows up in pg_stat_activity.
            with trio.fail_after(60):
                while not await trio.to_thread.run_sync(_query_running, postgres):
                    await trio.sleep(0.1)
            pid = client.helper_pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            with trio.fail_after(60):
                while not outcome:
                    await trio.sleep(0.05)
            assert outcome[0] is not None, "a cut-off result must not look whole"
            # Made while the helper is gone: it waits in the socket's backlog for the next.
            assert await trio.to_thread.run_sync(_select_one, fwd.host, fwd.port) == 42
            assert client.helper_pid != pid
            assert await trio.to_thread.run_sync(_select_one, fwd.host, fwd.port) == 42
        nursery.cancel_scope.cancel()


def _query_running(pg: Postgres) -> bool:
    with psycopg.connect(host=str(pg.socket_dir), port=pg.port, user="postgres",
                         dbname="postgres") as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity "
                           "WHERE query LIKE 'SELECT i, repeat%' AND state = 'active'").fetchone()
    return row is not None and row[0] > 0


# -- without PostgreSQL: an echo service on the tailnet --


async def _echo(stream: tsproc.TailnetStream) -> None:
    async for data in stream:
        await stream.send_all(data)
    await stream.send_eof()


async def _read_all(stream: trio.abc.ReceiveStream) -> bytes:
    got = b""
    async for data in stream:
        got += data
    return got


async def test_forward_carries_half_close_both_ways(tailnet_node):
    async with tailnet_node("server") as server, tailnet_node("client") as client, \
            trio.open_nursery() as nursery:
        await nursery.start(tsproc.serve_tcp, _echo, server, 7)
        async with client.forward("server", 7) as fwd:
            assert fwd.path is not None
            stream = await trio.open_unix_socket(str(fwd.path))
            payload = os.urandom(3 << 20)
            async with stream, trio.open_nursery() as inner:

                async def send() -> None:
                    await stream.send_all(payload)
                    await stream.send_eof()

                inner.start_soon(send)
                with trio.fail_after(60):
                    assert await _read_all(stream) == payload
        nursery.cancel_scope.cancel()


async def _expect_reset(host: str, port: int) -> None:
    with trio.fail_after(30):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError:
            return  # reset before connect() returned: as good
        async with stream:
            try:
                got = await stream.receive_some()
            except trio.BrokenResourceError as exc:
                assert isinstance(exc.__cause__, ConnectionResetError), exc
                return
            pytest.fail(f"read {got!r} (an orderly EOF if empty), not a reset")


@pytest.mark.offline  # and nothing left the machine for 198.51.100.7 or db.example.invalid
async def test_an_unreachable_target_resets_the_local_connection(tailnet_node):
    async with tailnet_node("client") as client:
        for host in ("nosuchnode", "198.51.100.7", "db.example.invalid"):
            async with client.forward(host, 80, local_port=0) as fwd:
                await _expect_reset("127.0.0.1", fwd.port)
        # A tailnet node that refuses the port (nothing listens on it).
        async with client.forward("client", 9, local_port=0) as fwd:
            await _expect_reset("127.0.0.1", fwd.port)


async def test_a_connection_waits_for_the_node_at_most_node_wait_then_resets(tailnet_node):
    policy = tsproc.RestartPolicy(initial_backoff=6.0, jitter=0.0)
    async with tailnet_node("server") as server, \
            tailnet_node("client", restart=policy) as client, \
            trio.open_nursery() as nursery:
        await nursery.start(tsproc.serve_tcp, _echo, server, 7)
        async with client.forward("server", 7, local_port=0, node_wait=1.0) as fwd:
            pid = client.helper_pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            # The node is down for 6 s; the connection waits 1 s of it, then is reset.
            await _expect_reset("127.0.0.1", fwd.port)
            assert client.helper_pid in (None, pid)  # no new helper yet: the guard reset it
            with trio.fail_after(60):
                while client.state is not tsproc.NodeState.RUNNING or client.helper_pid == pid:
                    await trio.sleep(0.1)
            stream = await trio.open_tcp_stream("127.0.0.1", fwd.port)
            async with stream:
                await stream.send_all(b"back")
                await stream.send_eof()
                with trio.fail_after(30):
                    assert await _read_all(stream) == b"back"
        nursery.cancel_scope.cancel()


_OTHER_UID_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
try:
    s.sendall(b"ping")
    print(repr(s.recv(100)))
except OSError as exc:
    print(type(exc).__name__)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another uid")
async def test_another_uid_is_refused_on_the_unix_endpoint(tailnet_node):
    accepted = 0

    async def count(stream: tsproc.TailnetStream) -> None:
        nonlocal accepted
        accepted += 1
        await _echo(stream)

    async with tailnet_node("server") as server, tailnet_node("client") as client, \
            trio.open_nursery() as nursery:
        await nursery.start(tsproc.serve_tcp, count, server, 7)
        async with client.forward("server", 7) as fwd:
            assert fwd.path is not None
            # Loosen the modes as a careless user might: the uid check still holds.
            fwd.path.parent.chmod(0o755)
            fwd.path.chmod(0o777)
            result = await trio.to_thread.run_sync(lambda: subprocess.run(
                ["/usr/bin/python3", "-c", _OTHER_UID_CLIENT, str(fwd.path)],
                user=65534, capture_output=True, text=True, timeout=30, check=True))
            # Closed at once: the client's write or read fails, or it reads EOF; nothing more.
            assert result.stdout.strip() in ("b''", "ConnectionResetError", "BrokenPipeError"), \
                result
            stream = await trio.open_unix_socket(str(fwd.path))
            async with stream:
                await stream.send_all(b"mine")
                await stream.send_eof()
                with trio.fail_after(30):
                    assert await _read_all(stream) == b"mine"
            assert accepted == 1  # the other uid's connection never reached the tailnet
        nursery.cancel_scope.cancel()


async def test_bad_input_fails_at_forward_time(tailnet_node, tmp_path: Path):
    async with tailnet_node("client") as client:
        existing = tmp_path / "exists"
        existing.mkdir()
        bad = [
            ({"host": "", "port": 80}, tsproc.InvalidArgumentError, "host"),
            ({"host": "db", "port": 0}, tsproc.InvalidArgumentError, "port"),
            ({"host": "db", "port": 70000}, tsproc.InvalidArgumentError, "port"),
            ({"host": "d b", "port": 80}, tsproc.InvalidArgumentError, "host"),
            ({"host": "db", "port": 80, "unix_dir": existing}, tsproc.InvalidArgumentError,
             "already exists"),
            ({"host": "db", "port": 80, "unix_dir": tmp_path / "no" / "parent"},
             tsproc.InvalidArgumentError, "cannot create"),
            ({"host": "db", "port": 80, "unix_dir": "/proc/tsproc-forward"},
             tsproc.InvalidArgumentError, "cannot create"),
            ({"host": "db", "port": 80, "unix_dir": tmp_path / "x", "local_port": 0},
             tsproc.InvalidArgumentError, "not both"),
            ({"host": "db", "port": 80, "local_port": -1}, tsproc.InvalidArgumentError,
             "local_port"),
            ({"host": "db", "port": 80, "node_wait": 0}, tsproc.InvalidArgumentError,
             "node_wait"),
            ({"host": "db", "port": 80, "node_wait": 1e8}, tsproc.InvalidArgumentError,
             "node_wait"),
        ]
        for kwargs, error, text in bad:
            with pytest.raises(error, match=text):
                async with client.forward(**kwargs):
                    pytest.fail(f"forward({kwargs}) was accepted")
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            with pytest.raises(tsproc.AddressInUseError, match="in use"):
                async with client.forward("db", 80, local_port=taken.getsockname()[1]):
                    pass
        if os.geteuid() != 0:  # root may write anywhere
            locked = tmp_path / "locked"
            locked.mkdir(mode=0o500)
            with pytest.raises(tsproc.InvalidArgumentError, match="cannot create"):
                async with client.forward("db", 80, unix_dir=locked / "fwd"):
                    pass
        assert not (tmp_path / "x").exists()


async def test_the_endpoint_goes_with_cancellation_and_with_the_node(tailnet_node):
    async with tailnet_node("client") as client:
        with trio.move_on_after(0.2):
            async with client.forward("server", 7) as fwd:
                path = fwd.path
                assert path is not None and path.exists()
                await trio.sleep_forever()
        assert not path.exists() and not path.parent.exists()

    node = tailnet_node("other")
    with pytest.raises(tsproc.NodeNotStartedError):
        async with node.forward("server", 7, local_port=0):
            pass
    async with node:
        context = node.forward("server", 7, local_port=0)
        fwd = await context.__aenter__()
        proxy_context = node.socks5()
        proxy = await proxy_context.__aenter__()
    # The node's close took both endpoints with it; leaving their contexts later is fine.
    assert fwd.closed and proxy.closed
    assert proxy.path is not None and not proxy.path.exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", fwd.port), timeout=5).close()
    await context.__aexit__(None, None, None)
    await proxy_context.__aexit__(None, None, None)


async def test_closing_while_the_guard_resets_connections(tailnet_node):
    policy = tsproc.RestartPolicy(initial_backoff=60.0, max_backoff=60.0, jitter=0.0)
    async with tailnet_node("client", restart=policy) as client, \
            client.forward("client", 7, node_wait=0.5) as fwd:
        path = fwd.path
        assert path is not None
        pid = client.helper_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        for _ in range(2):  # the guard resets connections after 0.5 s, until the close
            with trio.fail_after(30):
                stream = await trio.open_unix_socket(str(path))
                async with stream:
                    with pytest.raises(trio.BrokenResourceError):
                        await stream.send_all(b"x")
                        await stream.receive_some()
        assert client.helper_pid in (None, pid)
    assert not path.exists()
