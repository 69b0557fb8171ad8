"""Node(state=...): a directory, "memory", or a StateStore the helper calls through the control
channel (state_read / state_write, docs/protocol.md §4b). The identity kept in a Python store
survives a helper crash and a host restart; a store that raises or hangs fails the start with a
clear StateStoreError; the state's secrets never reach a log."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
from test_secrets import all_log_text

import tsproc
from tsproc._core.statestore import STORE_CALL_BOUND
from tsproc._wire import protocol as proto
from tsproc._wire.rpc import RpcChannel
from tsproc.testing import local_tailnet


class SqliteStore:
    """A plain (not async) store over one SQLite file: what an application might write."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value BLOB)")
        self.reads: list[str] = []
        self.writes: list[str] = []

    def read(self, key: str) -> bytes | None:
        self.reads.append(key)
        row = self.db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def write(self, key: str, value: bytes) -> None:
        self.writes.append(key)
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, value))

    def close(self) -> None:
        self.db.close()


class AsyncDictStore:
    """An async store; *broken* raises on read, *hang* never answers."""

    def __init__(self, *, broken: bool = False, hang: bool = False) -> None:
        self.values: dict[str, bytes] = {}
        self.broken, self.hang = broken, hang

    async def read(self, key: str) -> bytes | None:
        await trio.lowlevel.checkpoint()
        if self.broken:
            raise PermissionError(f"vault says no to {key}")
        if self.hang:
            await trio.sleep_forever()
        return self.values.get(key)

    async def write(self, key: str, value: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.values[key] = value


async def restarted(node: tsproc.Node, events: tsproc.EventStream) -> None:
    with trio.fail_after(60):
        async for event in events:
            if isinstance(event, tsproc.HelperRestartedEvent):
                break
        await node.wait_running()


@pytest.mark.offline
async def test_a_sqlite_store_keeps_the_identity_across_a_helper_crash_and_a_host_restart(
        tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="tsproc")
    db = tmp_path / "state.db"
    async with local_tailnet() as tailnet:
        store = SqliteStore(db)
        async with tailnet.node("kept", state=store, ephemeral=False) as node:
            ips, first = node.tailscale_ips, await node.status()
            assert "_machinekey" in store.writes and "_machinekey" in store.reads
            helper_dir = node.state_dir
            assert helper_dir is not None
            # tsnet's state is in the store only, never in the helper's directory.
            assert not list(helper_dir.glob("tailscaled.state*"))
            events = node.events()
            os.kill(node.helper_pid or 0, signal.SIGKILL)
            await restarted(node, events)
            assert node.tailscale_ips == ips
            assert (await node.status()).self.id == first.self.id
        store.close()
        assert not helper_dir.exists()  # a temporary directory, removed on close

        store = SqliteStore(db)  # the host restarts: a new store object over the same file
        async with tailnet.node("kept", state=store, ephemeral=False) as node:
            assert node.tailscale_ips == ips
            assert (await node.status()).self.id == first.self.id
        store.close()
    with sqlite3.connect(db) as check:
        values = b"".join(bytes(v) for (v,) in check.execute("SELECT value FROM state"))
    assert b"privkey:" in values  # the store really holds the keys …
    secrets = {part for part in values.split(b'"') if part.startswith(b"privkey:")}
    secrets |= {line for line in values.split() if line.startswith(b"privkey:")}
    text = all_log_text(caplog.records)
    for secret in secrets:  # … and no log line has one of them
        assert secret.decode(errors="replace")[8:40] not in text


@pytest.mark.offline
async def test_a_store_that_raises_fails_the_start_clearly():
    async with local_tailnet() as tailnet:
        with trio.fail_after(60), pytest.raises(tsproc.StateStoreError) as caught:
            async with tailnet.node("nostore", state=AsyncDictStore(broken=True)):
                pass
    message = str(caught.value)
    assert "AsyncDictStore.read(" in message and "PermissionError" in message, message
    assert caught.value.code == "state_store"


@pytest.mark.offline
async def test_a_store_that_hangs_is_bounded():
    async with local_tailnet() as tailnet:
        with (trio.fail_after(STORE_CALL_BOUND + 40),
              pytest.raises(tsproc.StateStoreError) as caught):
            async with tailnet.node("slowstore", state=AsyncDictStore(hang=True)):
                pass
    assert f"did not answer within {STORE_CALL_BOUND:g} s" in str(caught.value)


@pytest.mark.offline
async def test_memory_state_is_for_ephemeral_nodes_and_leaves_nothing(tmp_path):
    with pytest.raises(tsproc.InvalidArgumentError, match="ephemeral"):
        tsproc.Node("forgetful", state="memory")
    async with local_tailnet() as tailnet, tailnet.node("forgetful", state="memory") as node:
        assert node.tailscale_ips
        assert node.state_dir is not None
        assert not list(node.state_dir.glob("tailscaled.state*"))
    directory = tmp_path / "nodedir"
    async with local_tailnet() as tailnet, tailnet.node("dirnode", state=directory) as node:
        assert node.state_dir == directory
        assert (directory / "tailscaled.state").exists()


def test_state_arguments_are_checked():
    with pytest.raises(tsproc.InvalidArgumentError, match="not both"):
        tsproc.Node("x", state="/tmp/a", state_dir="/tmp/b")
    with pytest.raises(tsproc.InvalidArgumentError, match="StateStore"):
        tsproc.Node("x", state=42)  # type: ignore[arg-type]
    assert isinstance(AsyncDictStore(), tsproc.StateStore)


async def test_RpcChannel_answers_the_helpers_requests_in_tasks_of_their_own():
    """The host side of §4b without a helper: answers, typed errors with their code, a
    handler's own bug as `internal` naming only its type, and no handler at all."""
    release = trio.Event()

    async def handler(method: str, params: dict[str, Any]) -> dict[str, Any]:
        if method == "slow":
            await release.wait()
        if method == "bug":
            raise KeyError("privkey:0123abcd")
        if method == "refused":
            raise tsproc.StateStoreError("the store said no")
        return {"echo": params}

    async def answers(rpc: RpcChannel, helper: trio.socket.SocketType,
                      frames: list[bytes], n: int) -> dict[int, proto.Response]:
        await helper.send(b"".join(frames))
        decoder, got = proto.Decoder(), {}
        while len(got) < n:
            decoder.receive_data(await helper.recv(65536))
            while (msg := decoder.next_message()) is not None:
                assert isinstance(msg, proto.Response)
                got[msg.id] = msg
        return got

    for on_request in (handler, None):
        host_end, helper_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        helper = trio.socket.from_stdlib_socket(helper_end)
        rpc = RpcChannel(trio.socket.from_stdlib_socket(host_end), lambda msg: None,
                         on_request=on_request)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(rpc.serve)
                frames = [proto.encode_request(i, m, {"key": "k"})
                          for i, m in enumerate(["slow", "echo", "bug", "refused"], 1)]
                got = await answers(rpc, helper, frames[1:] + frames[:1], 3)
                if on_request is None:
                    assert {r.error["code"] for r in got.values() if r.error} == {"unknown_method"}
                else:
                    # "slow" waits in its own task; the others are answered meanwhile.
                    assert got[2].result == {"echo": {"key": "k"}}
                    assert got[3].error == {"code": "internal",
                                            "message": "the host failed: KeyError"}
                    assert got[4].error is not None and got[4].error["code"] == "state_store"
                    release.set()
                    assert (await answers(rpc, helper, [], 1))[1].result == {"echo": {"key": "k"}}
                rpc.close()
        helper.close()
