"""tsproc against Headscale, the open-source control server people deploy: real helpers, a real
server on 127.0.0.1, keys minted with its CLI."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

import tsproc
from tests.conftest import pid_alive
from tests.interop.conftest import USER
from tsproc.errors import redact
from tsproc.testing import HeadscaleNode, HeadscaleTailnet, headscale_tailnet

MiB = 1 << 20
FAST = tsproc.RestartPolicy(initial_backoff=0.05, heartbeat_interval=0.5, heartbeat_timeout=2.0)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    with trio.move_on_after(timeout):
        while not await check():
            await trio.sleep(0.2)
        return
    raise AssertionError(f"not within {timeout:g} s: {what}")


def named(nodes: list[HeadscaleNode], name: str) -> list[HeadscaleNode]:
    return [n for n in nodes if n.name == name]


async def test_two_nodes_join_with_a_reusable_key_and_carry_16MiB_each_way(headscale):
    key = await headscale.create_auth_key(reusable=True)
    size = 16 * MiB
    payload_up = os.urandom(MiB) * (size // MiB)
    payload_down = os.urandom(MiB) * (size // MiB)
    digests: dict[str, str] = {}

    async def send(stream: tsproc.TailnetStream, data: bytes) -> None:
        view = memoryview(data)
        for i in range(0, len(view), MiB):
            await stream.send_all(view[i : i + MiB])
        await stream.send_eof()

    async def receive(stream: tsproc.TailnetStream, name: str) -> None:
        h = hashlib.sha256()
        n = 0
        while chunk := await stream.receive_some(MiB):
            h.update(chunk)
            n += len(chunk)
        digests[name] = f"{n}:{h.hexdigest()}"

    async with (
        headscale.node("server", auth_key=key) as server,
        headscale.node("client", auth_key=key) as client,
    ):
        listed = await headscale.list_nodes()
        assert sorted(n.name for n in listed) == ["client", "server"]
        assert {n.user for n in listed} == {USER}
        (server_entry,) = named(listed, "server")
        assert str(server.tailscale_ips[0]) in server_entry.ip_addresses
        status = await client.status()
        assert status.magic_dns_suffix == headscale.magic_dns_suffix
        assert [p.hostname for p in status.peers] == ["server"]

        listener = await server.listen(9000)
        accepted: list[tsproc.TailnetStream] = []

        async def serve_one() -> None:
            stream = await listener.accept()
            accepted.append(stream)
            async with trio.open_nursery() as n:
                n.start_soon(receive, stream, "server_got")
                n.start_soon(send, stream, payload_down)

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve_one)
                stream = await client.dial("server", 9000)
                async with trio.open_nursery() as n:
                    n.start_soon(send, stream, payload_up)
                    n.start_soon(receive, stream, "client_got")
        assert digests["server_got"] == f"{size}:{hashlib.sha256(payload_up).hexdigest()}"
        assert digests["client_got"] == f"{size}:{hashlib.sha256(payload_down).hexdigest()}"

        who = await server.whois(accepted[0].remote_addr)
        assert who.user.login_name == USER
        assert who.node.hostname == "client"
        assert who.node.dns_name == f"client.{headscale.magic_dns_suffix}."
        assert (await client.whois(str(server.tailscale_ips[0]))).user.login_name == USER
        await stream.aclose()
        await accepted[0].aclose()


async def test_a_node_with_an_ephemeral_key_is_deleted_after_a_clean_close(headscale):
    async with headscale.node("brief") as node:  # the tailnet's reusable ephemeral key
        (entry,) = named(await headscale.list_nodes(), "brief")
        assert entry.ephemeral
        assert str(node.tailscale_ips[0]) in entry.ip_addresses

    async def gone() -> bool:
        return not named(await headscale.list_nodes(), "brief")

    # Closing logs the node out, and Headscale deletes an ephemeral node when it logs out.
    await eventually(gone, 15, "the ephemeral node left `headscale nodes list`")


@pytest.mark.parametrize(
    "case", ["unknown key", "wrong secret", "single-use key used twice", "expired key"])
async def test_a_wrong_key_is_an_AuthError_that_never_shows_the_key(headscale, caplog, tmp_path,
                                                                   case):
    caplog.set_level(logging.DEBUG, logger="tsproc")
    if case == "unknown key":
        key = "hskey-auth-AAAAAAAAAAAA-" + "B" * 64
        expected = "invalid pre auth key"
    elif case == "wrong secret":
        real = await headscale.create_auth_key()
        key = real[: -64] + "x" * 64  # a real key's prefix, another secret
        expected = "invalid auth key"
    elif case == "expired key":
        key = await headscale.create_auth_key(expiration=1)
        await trio.sleep(1.5)
        expected = "authkey expired"
    else:
        key = await headscale.create_auth_key()
        async with headscale.node("first", auth_key=key, ephemeral=False,
                                  state_dir=tmp_path / "first"):
            pass
        expected = "authkey already used"
    with pytest.raises(tsproc.AuthError) as caught:
        async with headscale.node("intruder", auth_key=key, up_timeout=20):
            pass
    message = str(caught.value)
    assert expected in message
    assert message.startswith("control server refused the auth key"), message
    secret = key[-64:]
    assert secret not in message
    assert secret not in caplog.text
    assert not named(await headscale.list_nodes(), "intruder")


async def test_a_restarted_helper_is_the_same_node_not_a_duplicate(headscale, tmp_path):
    async with headscale.node("keeper", ephemeral=False, state_dir=tmp_path / "state",
                              restart=FAST) as node:
        (before,) = named(await headscale.list_nodes(), "keeper")
        ips_before = node.tailscale_ips
        events = node.events()
        old_pid = node.helper_pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        with trio.fail_after(30):
            async for event in events:
                if isinstance(event, tsproc.HelperRestartedEvent):
                    break
        assert node.helper_pid not in (None, old_pid)
        assert (await node.status()).backend_state == "Running"
        assert node.tailscale_ips == ips_before

        async def back_online_as_itself() -> bool:
            nodes = await headscale.list_nodes()
            return len(nodes) == 1 and nodes[0].id == before.id and nodes[0].online

        await eventually(back_online_as_itself, 15,
                         "the restarted helper is the one node `keeper`, online")
        (after,) = await headscale.list_nodes()
        assert after.ip_addresses == before.ip_addresses
        assert after.info["node_key"] == before.info["node_key"]


async def test_keys_stay_out_of_argv_environment_logs_and_reprs(headscale, caplog, tmp_path):
    caplog.set_level(logging.DEBUG, logger="tsproc")  # also turns tsnet's verbose log on
    # hskey-auth-<12-character id>-<64-character secret>
    secrets = [k[-64:] for k in (headscale.auth_key, headscale.ephemeral_auth_key)]
    for key in (headscale.auth_key, headscale.ephemeral_auth_key):
        assert re.fullmatch(r"hskey-auth-[A-Za-z0-9_-]{12}-[A-Za-z0-9_-]{64}", key)
        assert redact(f"key={key}.") == "key=hskey-REDACTED."
    async with headscale.node("quiet", ephemeral=False, state_dir=tmp_path / "quiet") as node:
        pid = node.helper_pid
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode()
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read().decode()
        assert "TS_DEBUG_USE_DERP_HTTP=1" in environ.split("\0")
        await node.status()
    for secret in secrets:
        assert secret not in argv
        assert secret not in environ
        assert secret not in caplog.text
        assert secret not in repr(headscale)


async def test_headscale_tailnet_leaves_nothing_behind(headscale_binary):
    before = dict(os.environ)
    async with headscale_tailnet(headscale_path=headscale_binary) as net:
        assert isinstance(net, HeadscaleTailnet)
        assert dict(os.environ) == before  # the DERP knob goes to its nodes only
        data_dir = net.config_path.parent
        assert data_dir.is_dir()
        users = await net.cli("users", "list")
        assert [u["name"] for u in users] == ["tsproc"]
        with pytest.raises(ValueError, match="intentional"):
            # The body's own exception comes out as itself, not wrapped in an ExceptionGroup.
            async with headscale_tailnet(headscale_path=headscale_binary):
                raise ValueError("intentional")
    assert not data_dir.exists()
    assert dict(os.environ) == before


HOST_SCRIPT = textwrap.dedent("""
    import sys, trio
    from tsproc.testing import headscale_tailnet
    async def main():
        async with headscale_tailnet(headscale_path=sys.argv[1]) as net:
            print(net.config_path, flush=True)
            await trio.sleep_forever()
    trio.run(main)
""")


def pids_running(needle: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if needle.encode() in f.read():
                        found.append(int(name))
            except OSError:
                continue
    return [pid for pid in found if pid_alive(pid)]


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux-only")
async def test_SIGKILL_of_the_host_takes_Headscale_down(headscale_binary):
    host = subprocess.Popen([sys.executable, "-c", HOST_SCRIPT, str(headscale_binary)],
                            stdout=subprocess.PIPE, text=True)
    config = ""
    try:
        config = (await trio.to_thread.run_sync(host.stdout.readline)).strip()
        assert config.endswith("config.json")
        assert len(pids_running(config)) == 1
        host.kill()
        host.wait()
        killed_at = time.monotonic()
        while pids_running(config) and time.monotonic() - killed_at < 5:
            await trio.sleep(0.05)
        assert not pids_running(config), "Headscale outlived its host"
    finally:
        host.kill()
        host.wait()
        host.stdout.close()
        if config:
            shutil.rmtree(Path(config).parent, ignore_errors=True)  # the killed host could not
