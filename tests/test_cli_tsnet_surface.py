"""The command line's options for tsnet's newer surface: `tsproc serve --service svc:NAME`
(with --tag) hosts a Tailscale Service, and `--exit-node` sends a command's traffic for
addresses outside the tailnet through an exit node. Real subprocesses, a local tailnet."""

from __future__ import annotations

import signal
import subprocess
from functools import partial

import pytest
import trio
from test_cli import TSPROC, Lines, cli_env, node_args
from test_exit_node import TARGET, answer, dial_through

import tsproc
from tsproc.testing import local_tailnet


async def hello_backend(stream: trio.SocketStream) -> None:
    async with stream:
        await stream.send_all(b"hello from the backend")


@pytest.mark.offline
async def test_serve_service_hosts_a_tailscale_service():
    async with local_tailnet() as tailnet, trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, hello_backend, 0,
                                                host="127.0.0.1"))
        backend = listeners[0].socket.getsockname()[1]
        serve = await trio.lowlevel.open_process(
            [*TSPROC, "serve", "8080", "--to", f"127.0.0.1:{backend}", "--service", "svc:api",
             "--tag", "tag:api", "--hostname", "api-host", *node_args(tailnet.control_url)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(),
        )
        out, err = Lines(), Lines()
        nursery.start_soon(out.pump, serve.stdout)
        nursery.start_soon(err.pump, serve.stderr)
        try:
            line = await out.wait_for("serving tailnet port 8080")
            assert "service svc:api" in line
            async with tailnet.node("caller") as caller:
                with trio.fail_after(60):
                    while True:
                        try:
                            with trio.fail_after(5):
                                async with await caller.dial("svc:api", 8080) as stream:
                                    got = await stream.receive_some(100)
                                    if got:
                                        break
                        except (tsproc.DialError, trio.TooSlowError, trio.BrokenResourceError):
                            pass
                        await trio.sleep(0.2)
                assert got == b"hello from the backend"
        finally:
            serve.send_signal(signal.SIGINT)
            with trio.fail_after(30):
                assert await serve.wait() == 0, "\n".join(err.lines)
        nursery.cancel_scope.cancel()


@pytest.mark.offline
async def test_connect_through_an_exit_node():
    async with local_tailnet() as tailnet, \
            tailnet.node("exit", advertise_exit_node=True) as exit_node, \
            tailnet.node("probe", exit_node="exit") as probe, trio.open_nursery() as nursery:
        seen: list[tuple[str, int]] = []
        nursery.start_soon(answer, await exit_node.listen_any_port(), seen)
        await dial_through(probe)  # the exit routes are approved and known
        with trio.fail_after(60):
            result = await trio.run_process(
                [*TSPROC, "connect", *map(str, TARGET), "--exit-node", "exit",
                 "--hostname", "cli", *node_args(tailnet.control_url)],
                stdin=b"", capture_stdout=True, capture_stderr=True, env=cli_env(), check=False,
            )
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout == b"via the exit node"
        assert seen[-1] == TARGET
        nursery.cancel_scope.cancel()
