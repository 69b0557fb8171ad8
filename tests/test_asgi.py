"""ASGI apps served on the tailnet by tsproc.asgi (hypercorn), reached over the tailnet."""

from __future__ import annotations

import importlib.metadata
import json
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import tsproc
import tsproc.asgi
from tsproc.httpx import TailnetTransport
from tsproc.websocket import open_websocket

FORGED = [
    ("Tailscale-User-Login", "boss@example.com"),
    ("Tailscale-User-Name", "The Boss"),
    ("Tailscale-User-Profile-Pic", "https://example.com/boss.png"),
    ("Tailscale-Headers-Info", "https://tailscale.com/s/serve-headers"),
    ("TAILSCALE-USER-LOGIN", "shouting@example.com"),
    ("tailscale-anything", "x"),
    ("Tailscale_User_Login", "underscore@example.com"),
    ("X-Tailscale-User", "boss"),
    ("x-tailscale-caps", "admin"),
    ("X-Webauth-User", "boss"),
    ("X-WEBAUTH-EMAIL", "boss@example.com"),
    ("X_Webauth_User", "boss"),
]


def identity_of(scope: dict[str, Any]) -> dict[str, Any]:
    ident = dict(scope["extensions"]["tsproc.whois"])
    who = ident.pop("whois")
    assert tsproc.asgi.scope_whois(scope) is who
    assert isinstance(who, tsproc.WhoIs)
    return ident


class App:
    """A bare ASGI app that reports what it sees, with lifespan and a slow endpoint."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.slow_started = trio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                self.events.append(message["type"])
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            report = {"identity": identity_of(scope), "client": list(scope["client"]),
                      "headers": [k.decode() for k, _ in scope["headers"]]}
            await send({"type": "websocket.send", "text": json.dumps(report)})
            await send({"type": "websocket.close", "code": 1000})
            return
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/slow":
            self.slow_started.set()
            await trio.sleep(1)
        report = {
            "client": list(scope["client"]),
            "server": list(scope["server"]),
            "http_version": scope["http_version"],
            "identity": identity_of(scope),
            "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
            "body": body.decode(),
        }
        data = json.dumps(report).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})


async def test_the_app_sees_the_tailnet_client_and_its_verified_identity(tailnet_node):
    app = App()
    async with (
        tailnet_node("web") as web,
        tailnet_node("client") as client_node,
        trio.open_nursery() as nursery,
    ):
        url = await nursery.start(tsproc.asgi.serve, app, web, 80)
        assert url == "http://web:80/"
        assert app.events == ["lifespan.startup"]
        expected = await web.whois(str(client_node.tailscale_ips[0]))
        async with httpx.AsyncClient(transport=TailnetTransport(client_node)) as client:
            response = await client.post("http://web/who", content=b"payload")
            report = response.json()
            client_addr = response.extensions["network_stream"].get_extra_info("client_addr")
        assert tuple(report["client"]) == client_addr
        assert report["client"][0] == str(client_node.tailscale_ips[0])
        assert report["server"] == [str(web.tailscale_ips[0]), 80]
        assert report["body"] == "payload"
        ident = report["identity"]
        assert ident["hostname"] == "client"
        assert ident["dns_name"].startswith("client.")
        assert ident["login_name"] == expected.user.login_name != ""
        assert ident["display_name"] == expected.user.display_name
        assert ident["tags"] == list(expected.node.tags)
        assert str(client_node.tailscale_ips[0]) in ident["tailscale_ips"]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "h2c"])
async def test_a_forged_identity_header_never_reaches_the_app(tailnet_node, http2):
    app = App()
    async with (
        tailnet_node("web") as web,
        tailnet_node("mallory") as mallory,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(tsproc.asgi.serve, app, web, 80)
        transport = TailnetTransport(mallory, http1=not http2, http2=http2)
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get("http://web/", headers=[*FORGED, ("X-Other", "kept")])
        report = response.json()
        assert report["http_version"] == ("2" if http2 else "1.1")
        names = [name for name, _ in report["headers"]]
        assert "x-other" in names
        for name in names:
            assert not name.replace("_", "-").startswith(
                ("tailscale-", "x-tailscale-", "x-webauth-")), name
        values = [value for _, value in report["headers"]]
        assert not any("boss" in v or "example.com" in v for v in values)
        assert report["identity"]["hostname"] == "mallory"
        nursery.cancel_scope.cancel()


async def test_raw_http1_request_with_forged_headers_and_folded_case(tailnet_node):
    app = App()
    async with (
        tailnet_node("web") as web,
        tailnet_node("mallory") as mallory,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(tsproc.asgi.serve, app, web, 80)
        stream = await mallory.dial("web", 80)
        forged = "".join(f"{k}: {v}\r\n" for k, v in FORGED)
        await stream.send_all(
            f"GET / HTTP/1.1\r\nHost: web\r\n{forged}Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
        await stream.aclose()
        report = json.loads(data.partition(b"\r\n\r\n")[2])
        assert [name for name, _ in report["headers"]] == ["host", "connection"]
        nursery.cancel_scope.cancel()


async def test_websocket_scope_has_the_identity_and_no_forged_headers(tailnet_node):
    app = App()
    async with (
        tailnet_node("web") as web,
        tailnet_node("client") as client_node,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(tsproc.asgi.serve, app, web, 8000)
        forged = [(k.encode(), v.encode()) for k, v in FORGED]
        async with open_websocket(client_node, "web", 8000, "/ws", extra_headers=forged) as ws:
            report = json.loads(await ws.get_message())
        assert report["identity"]["hostname"] == "client"
        assert report["client"][0] == str(client_node.tailscale_ips[0])
        assert not [h for h in report["headers"]
                    if h.replace("_", "-").startswith(("tailscale-", "x-tailscale-", "x-webauth"))]
        nursery.cancel_scope.cancel()


async def test_graceful_shutdown_finishes_requests_in_flight_then_runs_lifespan_shutdown(
    tailnet_node,
):
    app = App()
    stop = trio.Event()
    async with tailnet_node("web") as web, tailnet_node("client") as client_node:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: tsproc.asgi.serve(app, web, 80, shutdown_trigger=stop.wait,
                                                      task_status=task_status))
            async with httpx.AsyncClient(transport=TailnetTransport(client_node)) as client:
                results: list[int] = []
                done = trio.Event()

                async def slow() -> None:
                    results.append((await client.get("http://web/slow")).status_code)
                    done.set()

                nursery.start_soon(slow)
                await app.slow_started.wait()
                stop.set()  # while /slow is in flight
                await trio.sleep(0.2)
                # serve() is still draining; the listener is already closed.
                with pytest.raises(httpx.ConnectError):
                    async with httpx.AsyncClient(transport=TailnetTransport(client_node)) as c2:
                        await c2.get("http://web/")
                await done.wait()
        # The nursery ended: serve() returned by itself after the in-flight request finished.
        assert results == [200]
        assert app.events == ["lifespan.startup", "lifespan.shutdown"]


async def test_port_in_use_raises(tailnet_node):
    async with tailnet_node("web") as web, trio.open_nursery() as nursery:
        await nursery.start(tsproc.asgi.serve, App(), web, 80)
        with pytest.raises(tsproc.AddressInUseError):
            await tsproc.asgi.serve(App(), web, 80)
        nursery.cancel_scope.cancel()


def test_hypercorn_is_the_pinned_version():
    """tsproc.asgi uses hypercorn internals: the extra pins exactly the version tested here."""
    assert importlib.metadata.version("hypercorn") == tsproc.asgi.HYPERCORN_VERSION
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    assert f"hypercorn=={tsproc.asgi.HYPERCORN_VERSION}" in extras["asgi"]
