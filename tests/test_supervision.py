"""Crash isolation: the helper crashes, hangs, is killed or talks garbage; the host carries on
and the node comes back by itself with the same identity."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import trio
import trio.testing

import tsproc
from tests.conftest import child_pids, fd_targets, open_fds, pid_alive

FAST = tsproc.RestartPolicy(initial_backoff=0.05, heartbeat_interval=0.5, heartbeat_timeout=2.0)


async def next_event_of(events: tsproc.EventStream, kind: type, timeout: float = 30):
    with trio.fail_after(timeout):
        async for event in events:
            if isinstance(event, kind):
                return event
    raise AssertionError(f"event stream ended before a {kind.__name__}")


def helper_lines(caplog: pytest.LogCaptureFixture, pid: int | None, text: str) -> list[str]:
    """The forwarded log lines of helper *pid* that contain *text*."""
    prefix = f"helper {pid}: "
    return [m for r in caplog.records if prefix in (m := r.getMessage()) and text in m]


async def echo(stream: tsproc.TailnetStream) -> None:
    async with stream:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)


async def test_SIGKILL_mid_transfer_breaks_streams_and_the_node_comes_back(tailnet_node):
    async with (
        tailnet_node("server", restart=FAST) as server,
        tailnet_node("client", restart=FAST) as client,
    ):
        ips_before = server.tailscale_ips
        data_listener = await server.listen(9100, backlog=32)
        waiting_listener = await server.listen(9101)
        events = server.events()
        outcomes: list[str] = []
        accepted_after_restart: list[tsproc.TailnetStream] = []
        server_streams: list[tsproc.TailnetStream] = []

        async def server_side(stream: tsproc.TailnetStream) -> None:
            server_streams.append(stream)
            try:
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        outcomes.append("clean-eof")
                        return
                    await stream.send_all(data)
            except trio.BrokenResourceError:
                outcomes.append("broken")

        async def client_side(stream: tsproc.TailnetStream) -> None:
            try:
                while True:
                    await stream.send_all(b"x" * 16384)
                    await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async def wait_in_accept() -> None:
            accepted_after_restart.append(await waiting_listener.accept())

        # Closed however the test ends: a failure must not leave sockets for the garbage
        # collector to report in a later test.
        client_streams: list[tsproc.TailnetStream] = []
        probes: list[tsproc.TailnetStream] = []
        try:
            async with trio.open_nursery() as nursery:
                async def accept_ten() -> None:
                    async with trio.open_nursery() as inner:
                        for _ in range(10):
                            inner.start_soon(server_side, await data_listener.accept())
                nursery.start_soon(accept_ten)
                client_streams.extend([await client.dial("server", 9100) for _ in range(10)])
                for stream in client_streams:
                    nursery.start_soon(client_side, stream)
                nursery.start_soon(wait_in_accept)
                with trio.fail_after(10):
                    while len(server_streams) < 10:
                        await trio.sleep(0.05)
                await trio.sleep(0.3)  # let bytes flow on every stream

                old_pid = server.helper_pid
                assert old_pid is not None
                os.kill(old_pid, signal.SIGKILL)

                # A dial issued during the restart waits for the node and succeeds. (Wait for
                # the host to see the death: a fixed sleep was too short on a loaded machine.)
                with trio.fail_after(30):
                    async for event in events:
                        if (isinstance(event, tsproc.StateEvent)
                                and event.state is tsproc.NodeState.RESTARTING):
                            break
                with trio.fail_after(30):
                    probe = await client.dial("server", 9101)
                probes.append(probe)

                restarted = await next_event_of(events, tsproc.HelperRestartedEvent)
                assert restarted.returncode == -signal.SIGKILL
                assert "SIGKILL" in restarted.reason
                assert server.helper_pid not in (None, old_pid)
                assert server.tailscale_ips == ips_before

                with trio.fail_after(15):
                    while len(outcomes) < 10:
                        await trio.sleep(0.05)
                assert outcomes == ["broken"] * 10

                with trio.fail_after(15):
                    while not accepted_after_restart:
                        await trio.sleep(0.05)
                await accepted_after_restart[0].send_all(b"after restart")
                assert await probe.receive_some(100) == b"after restart"
                status = await server.status()
                assert status.helper_restarts == 1
                nursery.cancel_scope.cancel()
        finally:
            for s in [*client_streams, *server_streams, *probes, *accepted_after_restart]:
                await s.aclose()


async def test_SIGSTOP_is_detected_by_the_heartbeat_and_the_helper_replaced(tailnet_node):
    policy = tsproc.RestartPolicy(initial_backoff=0.05, heartbeat_interval=0.3,
                                  heartbeat_timeout=1.5)
    async with tailnet_node("frozen", restart=policy) as node:
        events = node.events()
        pid = node.helper_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        stopped_at = trio.current_time()
        restarted = await next_event_of(events, tsproc.HelperRestartedEvent, timeout=20)
        assert "heartbeat" in restarted.reason
        # Detected within interval + timeout (+ slack for the new helper to come up).
        assert trio.current_time() - stopped_at < 0.3 + 1.5 + 10
        assert node.helper_pid != pid
        assert not pid_alive(pid)
        assert (await node.status()).backend_state == "Running"


async def test_garbage_on_the_control_channel_is_a_protocol_error_and_a_restart(
    monkeypatch, caplog, tailnet_node
):
    # The garbage follows the answer to a call the test makes once the node is running. (After
    # the first heartbeat ping, as before, it could come while a slow machine still brings the
    # node up: a failed start, retried without a HelperRestartedEvent.)
    monkeypatch.setenv("TSPROC_HELPER_FAULT", "garbage_after:cert_domains@1")
    caplog.set_level(logging.INFO, logger="tsproc.helper")
    async with tailnet_node("garbled", restart=FAST) as node:
        ips, old_pid = node.tailscale_ips, node.helper_pid
        before = await node.status()
        events = node.events()
        # Its answer is lost when the garbage arrives in the same read: either outcome is fine.
        with contextlib.suppress(tsproc.ProtocolError):
            await node.cert_domains()
        restarted = await next_event_of(events, tsproc.HelperRestartedEvent)
        assert "protocol error" in restarted.reason
        # Killed before its end of the channel could read EOF ("the host is gone"), on which
        # it would have closed tsnet and logged the ephemeral node out: a new identity.
        assert restarted.returncode == -signal.SIGKILL
        assert node.tailscale_ips == ips
        after = await node.status()
        assert after.backend_state == "Running"
        assert after.self.id == before.self.id
    # The node is closed: every line the old helper wrote has been forwarded by now.
    assert not helper_lines(caplog, old_pid, "closed by the host")
    assert not helper_lines(caplog, old_pid, "logged out")


async def test_SIGKILL_right_after_running_keeps_the_identity_every_time(tailnet_node):
    # The node key must be on disk before the node reports Running: a helper killed the moment
    # it runs, again and again, comes back each time as the same node.
    kills = 5
    policy = tsproc.RestartPolicy(max_attempts=kills + 1, initial_backoff=0.05,
                                  heartbeat_interval=0.5, heartbeat_timeout=2.0)
    async with tailnet_node("phoenix", restart=policy) as node:
        ips = node.tailscale_ips
        node_id = (await node.status()).self.id
        events = node.events()
        for kill in range(1, kills + 1):
            pid = node.helper_pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            restarted = await next_event_of(events, tsproc.HelperRestartedEvent)
            assert restarted.returncode == -signal.SIGKILL, f"kill {kill}: {restarted.reason}"
            assert node.tailscale_ips == ips, f"kill {kill}"
            assert (await node.status()).self.id == node_id, f"kill {kill}"


async def test_a_helper_that_exits_at_once_ends_in_HelperCrashLoop_with_backoff(monkeypatch):
    monkeypatch.setenv("TSPROC_HELPER_FAULT", "exit_at_start")
    policy = tsproc.RestartPolicy(max_attempts=4, initial_backoff=0.2, jitter=0.1)
    started = time.monotonic()
    with trio.fail_after(30), pytest.raises(tsproc.HelperCrashLoop) as info:
        async with tsproc.Node("crashy", ephemeral=True, restart=policy):
            pass
    elapsed = time.monotonic() - started
    # Backoffs between the 4 attempts: 0.2 + 0.4 + 0.8 s (±10 %): not a busy loop.
    assert elapsed >= 0.9 * (0.2 + 0.4 + 0.8)
    message = str(info.value)
    assert "4 times" in message
    assert "fault: exit_at_start" in message
    assert info.value.returncode == 3


async def test_crash_loop_after_running_fails_the_node_without_raising_into_the_app(
    monkeypatch, tailnet_node
):
    # Every helper after the first dies on its first heartbeat.
    monkeypatch.setenv("TSPROC_HELPER_FAULT", "exit_after:hello@2+")
    policy = tsproc.RestartPolicy(max_attempts=3, initial_backoff=0.05)
    async with tailnet_node("fragile", restart=policy) as node:
        events = node.events()
        os.kill(node.helper_pid, signal.SIGKILL)
        failed = await next_event_of(events, tsproc.CrashLoopEvent)
        assert "3 times" in failed.error
        assert node.state is tsproc.NodeState.FAILED
        with pytest.raises(tsproc.HelperCrashLoop):
            await node.dial("fragile", 1)


def node_log(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "tsproc" and r.levelno == level]


async def test_a_restart_logs_a_WARNING_naming_the_node_and_a_crash_loop_an_ERROR(
    monkeypatch, tailnet_node, caplog
):
    caplog.set_level(logging.INFO, logger="tsproc")
    # The second helper runs; every one after it dies on its first heartbeat.
    monkeypatch.setenv("TSPROC_HELPER_FAULT", "exit_after:hello@3+")
    policy = tsproc.RestartPolicy(max_attempts=3, initial_backoff=0.05)
    async with tailnet_node("watched", restart=policy) as node:
        events = node.events()
        first_pid = node.helper_pid
        os.kill(first_pid, signal.SIGKILL)
        await next_event_of(events, tsproc.HelperRestartedEvent)
        warnings = node_log(caplog, logging.WARNING)
        assert any("'watched'" in w and f"pid {first_pid}" in w and "SIGKILL" in w
                   for w in warnings), warnings
        assert any("'watched'" in w and f"pid {node.helper_pid}" in w and "restarted" in w
                   for w in warnings), warnings
        assert not node_log(caplog, logging.ERROR)
        os.kill(node.helper_pid, signal.SIGKILL)
        await next_event_of(events, tsproc.CrashLoopEvent)
        errors = node_log(caplog, logging.ERROR)
        assert len(errors) == 1 and "'watched'" in errors[0] and "3 times" in errors[0], errors


HOST_SCRIPT = textwrap.dedent("""
    import sys, trio, tsproc
    async def main():
        async with tsproc.Node("orphan", control_url=sys.argv[1], ephemeral=True) as node:
            print(node.helper_pid, flush=True)
            await trio.sleep_forever()
    trio.run(main)
""")


async def test_SIGKILL_of_the_host_takes_its_helper_down_within_2s(tailnet):
    host = subprocess.Popen([sys.executable, "-c", HOST_SCRIPT, tailnet.control_url],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = await trio.to_thread.run_sync(host.stdout.readline)
        helper_pid = int(line)
        assert pid_alive(helper_pid)
        host.kill()
        host.wait()
        killed_at = time.monotonic()
        while pid_alive(helper_pid) and time.monotonic() - killed_at < 5:
            await trio.sleep(0.02)
        assert not pid_alive(helper_pid), "the helper outlived its host"
        assert time.monotonic() - killed_at < 2
    finally:
        host.kill()
        host.wait()
        host.stdout.close()


async def test_1000_connections_leave_nothing_behind(tailnet_node):
    fds_before = open_fds()
    children_before = child_pids()
    threads_before = threading.active_count()
    async with tailnet_node("server") as server, tailnet_node("client") as client:
        listener = await server.listen(9200, backlog=64)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, echo, [listener])
            limiter = trio.CapacityLimiter(50)

            async def one(i: int) -> None:
                async with limiter:
                    stream = await client.dial("server", 9200)
                    async with stream:
                        await stream.send_all(b"%d" % i)
                        assert await stream.receive_some(100) == b"%d" % i

            async def run(n: int) -> None:
                async with trio.open_nursery() as conns:
                    for i in range(n):
                        conns.start_soon(one, i)

            async def settled() -> tuple[int, int]:
                """Goroutine counts once both helpers hold no connection any more."""
                with trio.fail_after(30):
                    while True:
                        s, c = await server.status(), await client.status()
                        if s.helper_conns == 0 and c.helper_conns == 0:
                            # Let the pumps' goroutines finish exiting: a pooled one
                            # waits a second for another connection first (bridge/pool.go).
                            await trio.sleep(2)
                            s, c = await server.status(), await client.status()
                            return s.helper_goroutines, c.helper_goroutines
                        await trio.sleep(0.1)

            # The first connections between two peers start a few long-lived goroutines
            # (netstack, magicsock); the baseline is taken after them.
            await run(20)
            server_base, client_base = await settled()
            await run(1000)
            server_after, client_after = await settled()
            assert server_after <= server_base + 3, (server_base, server_after)
            assert client_after <= client_base + 3, (client_base, client_after)
            nursery.cancel_scope.cancel()
    assert child_pids() <= children_before
    assert threading.active_count() <= threads_before
    leaked = open_fds() - fds_before
    assert not leaked, f"leaked fds: {fd_targets(leaked)}"


async def test_two_nodes_on_one_state_dir(tailnet, tmp_path):
    state = tmp_path / "shared-state"
    async with tailnet.node("first", state_dir=state, ephemeral=False) as first:
        with pytest.raises(tsproc.StateDirLocked, match="in use by another node"):
            async with tailnet.node("second", state_dir=state, ephemeral=False):
                pass
        assert (await first.status()).backend_state == "Running"
        listener = await first.listen(9300)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, echo, [listener])
            stream = await first.dial("first", 9300)
            await stream.send_all(b"still here")
            assert await stream.receive_some(100) == b"still here"
            await stream.aclose()
            nursery.cancel_scope.cancel()
    assert oct(state.stat().st_mode & 0o777) == oct(0o700)
    for path in state.rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"


async def test_state_dir_writable_by_others_is_refused(tmp_path):
    state = tmp_path / "open"
    state.mkdir(mode=0o777)
    state.chmod(0o777)
    with pytest.raises(tsproc.InvalidArgumentError, match="chmod 700"):
        async with tsproc.Node("x", state_dir=state):
            pass


async def test_clean_close_is_bounded_even_when_the_helper_ignores_shutdown(
    monkeypatch, tailnet_node
):
    # The helper stops answering when asked to shut down (and ignores nothing else): close
    # must still finish, by SIGTERM, within the configured grace.
    monkeypatch.setenv("TSPROC_HELPER_FAULT", "hang_after:shutdown")
    policy = tsproc.RestartPolicy(shutdown_grace=1.0)
    node = tailnet_node("stubborn", restart=policy)
    async with node:
        pid = node.helper_pid
        started = trio.current_time()
    elapsed = trio.current_time() - started
    assert node.state is tsproc.NodeState.CLOSED
    assert not pid_alive(pid)
    # It did wait out the grace (the shutdown answer never came), and no longer than bounded.
    assert 0.9 <= elapsed < 1.0 * 2 + 2, f"close took {elapsed:.1f} s"


async def test_memory_limit_reaches_the_helper_as_GOMEMLIMIT(tailnet_node):
    async with tailnet_node("capped", memory_limit=64 << 20) as node:
        with open(f"/proc/{node.helper_pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
        assert b"GOMEMLIMIT=%d" % (64 << 20) in environ
        assert b"TSPROC_HELPER_GENERATION=1" in environ


async def test_events_report_state_changes_and_restarts(tailnet_node):
    async with tailnet_node("eventful", restart=FAST) as node:
        events = node.events()
        os.kill(node.helper_pid, signal.SIGKILL)
        seen: list[object] = []
        with trio.fail_after(30):
            async for event in events:
                seen.append(event)
                if isinstance(event, tsproc.HelperRestartedEvent):
                    break
        states = [e.state for e in seen if isinstance(e, tsproc.StateEvent)]
        assert tsproc.NodeState.RESTARTING in states
        assert states[-1] is tsproc.NodeState.RUNNING
    # The stream ends when the node closes.
    async for _ in events:
        pass
