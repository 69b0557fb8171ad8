"""The programs in examples/, run as a user runs them (subprocesses) on a local tailnet."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from tests.test_cli import Lines, cli_env
from tsproc import Node
from tsproc.httpx import TailnetTransport

EXAMPLES = Path(__file__).parents[1] / "examples"


async def start(nursery: trio.Nursery, script: str, *args: str) -> tuple[trio.Process, Lines]:
    process = await trio.lowlevel.open_process(
        [sys.executable, str(EXAMPLES / script), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(),
    )
    out, err = Lines(), Lines()
    nursery.start_soon(out.pump, process.stdout)
    nursery.start_soon(err.pump, process.stderr)
    process.err = err  # type: ignore[attr-defined]
    return process, out


async def stop(process: trio.Process) -> None:
    """Ctrl-C, as a person would: the example must end cleanly, and soon."""
    process.send_signal(signal.SIGINT)
    with trio.fail_after(30):
        code = await process.wait()
    assert code == 0, "\n".join(process.err.lines)  # type: ignore[attr-defined]


async def test_echo_server_on_a_given_tailnet(tailnet, tailnet_node):
    async with trio.open_nursery() as nursery:
        server, out = await start(nursery, "echo_server.py", "--control-url",
                                  tailnet.control_url)
        try:
            await out.wait_for("ready: echo server on echo:7")
            async with tailnet_node("visitor") as visitor:
                stream = await visitor.dial("echo", 7)
                await stream.send_all(b"ping over the tailnet")
                await stream.send_eof()
                data = b""
                while chunk := await stream.receive_some():
                    data += chunk
                await stream.aclose()
            assert data == b"hello visitor\nping over the tailnet"
            line = await out.wait_for("connection from")
            assert line.endswith("on visitor")
        finally:
            await stop(server)
        nursery.cancel_scope.cancel()


async def test_echo_server_with_its_own_local_tailnet():
    async with trio.open_nursery() as nursery:
        server, out = await start(nursery, "echo_server.py", "--local", "--port", "7000")
        try:
            url = (await out.wait_for("local tailnet: ")).split(": ", 1)[1]
            await out.wait_for("ready:")
            async with Node("visitor", control_url=url, ephemeral=True) as visitor:
                stream = await visitor.dial("echo", 7000)
                assert await stream.receive_some() == b"hello visitor\n"
                await stream.aclose()
        finally:
            await stop(server)
        nursery.cancel_scope.cancel()


async def test_http_service_admits_by_login_and_the_client_example_fetches(tailnet,
                                                                           tailnet_node):
    async with tailnet_node("alice") as alice, trio.open_nursery() as nursery:
        alice_login = (await alice.whois(str(alice.tailscale_ips[0]))).user.login_name
        service, out = await start(nursery, "http_service.py", "--control-url",
                                   tailnet.control_url, "--allow-login", alice_login)
        try:
            await out.wait_for("ready: serving http://web:80/")
            async with httpx.AsyncClient(transport=TailnetTransport(alice)) as client:
                admin = await client.get("http://web/admin")
                assert admin.status_code == 200
                assert admin.text == f"welcome to the admin page, {alice_login}\n"
                # A forged identity header changes nothing.
                forged = await client.get("http://web/",
                                          headers={"Tailscale-User-Login": "root@example.com"})
                assert forged.text.startswith("hello ")
                assert f"({alice_login}) on alice" in forged.text

            with trio.fail_after(60):
                result = await trio.run_process(
                    [sys.executable, str(EXAMPLES / "client.py"), "--control-url",
                     tailnet.control_url, "--hostname", "bob",
                     "http://web/", "http://web/admin", "http://web/whoami"],
                    capture_stdout=True, capture_stderr=True, env=cli_env(), check=False,
                )
            assert result.returncode == 0, result.stderr.decode()
            text = result.stdout.decode()
            assert "GET http://web/ -> 200\nhello " in text
            assert " on bob\n" in text
            assert "GET http://web/admin -> 403\n" in text
            assert "may not see this page" in text
            assert '"hostname": "bob"' in text
        finally:
            await stop(service)
        nursery.cancel_scope.cancel()


async def test_fastapi_greeter_under_asyncio_and_the_requests_client(tailnet):
    async with trio.open_nursery() as nursery:
        service, out = await start(nursery, "fastapi_greeter.py", "--control-url",
                                   tailnet.control_url)
        try:
            await out.wait_for("ready: serving http://greeter:80/")
            with trio.fail_after(90):
                result = await trio.run_process(
                    [sys.executable, str(EXAMPLES / "requests_client.py"), "--control-url",
                     tailnet.control_url, "--hostname", "fetcher", "http://greeter/"],
                    capture_stdout=True, capture_stderr=True, env=cli_env(), check=False,
                )
            assert result.returncode == 0, result.stderr.decode()
            text = result.stdout.decode()
            assert text.startswith("GET http://greeter/ -> 200\n"), text
            body = json.loads(text.split("\n", 1)[1])
            assert body["hostname"] == "fetcher"
            assert body["greeting"].startswith("hello ")
            assert body["greeting"].endswith(", on fetcher")

            # The asyncio client, with httpx: two URLs at once, HTTP/2 offered (and over
            # plain http:// not taken: nothing to negotiate it with).
            with trio.fail_after(90):
                result = await trio.run_process(
                    [sys.executable, str(EXAMPLES / "httpx_asyncio_client.py"), "--control-url",
                     tailnet.control_url, "--hostname", "asyncfetch", "--http2",
                     "http://greeter/", "http://greeter/"],
                    capture_stdout=True, capture_stderr=True, env=cli_env(), check=False,
                )
            assert result.returncode == 0, result.stderr.decode()
            pages = result.stdout.decode().split("GET http://greeter/ -> ")[1:]
            assert len(pages) == 2
            for page in pages:
                status, body = page.split("\n", 1)
                assert status == "200 (HTTP/1.1)"
                assert json.loads(body)["hostname"] == "asyncfetch"
        finally:
            await stop(service)
        nursery.cancel_scope.cancel()


async def test_fastapi_greeter_with_its_own_local_tailnet():
    async with trio.open_nursery() as nursery:
        service, out = await start(nursery, "fastapi_greeter.py", "--local", "--port", "8000")
        try:
            url = (await out.wait_for("local tailnet: ")).split(": ", 1)[1]
            await out.wait_for("ready: serving http://greeter:8000/")
            async with Node("visitor", control_url=url, ephemeral=True) as visitor, \
                    httpx.AsyncClient(transport=TailnetTransport(visitor)) as client:
                response = await client.get(
                    "http://greeter:8000/", headers={"Tailscale-User-Login": "root@x"})
            assert response.status_code == 200
            assert response.json()["hostname"] == "visitor"
        finally:
            await stop(service)
        nursery.cancel_scope.cancel()
