"""HTTPS certificates, Funnel and subnet routes, end to end on the local tailnet.

``local_tailnet(https=True)`` issues real certificates by DNS-01 from an embedded ACME server
and relays Funnel connections through its own ingress node. These tests run offline (the
``offline`` marker, tests/netns.py): in a network namespace where no packet can leave, and each
checks that none tried to leave through its only non-loopback interface.
"""

from __future__ import annotations

import math
import os
import re
import signal
import ssl
import sys
import tempfile
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from hypercorn.config import Config

import tsproc
import tsproc.asgi
from tsproc.httpx import TailnetTransport
from tsproc.testing import LocalTailnet, local_tailnet

pytestmark = [pytest.mark.offline, pytest.mark.tailnet(https=True)]

README = Path(__file__).parents[1] / "README.md"

# The acceptance bound for the first certificate (issued during the first handshake).
FIRST_CERT_WITHIN = 10.0


async def echo_upper(stream: tsproc.TailnetStream) -> None:
    """Answers each chunk in upper case until the peer closes."""
    async with stream:
        while data := await stream.receive_some():
            await stream.send_all(data.upper())


async def tls_client(tailnet: LocalTailnet, transport: trio.abc.Stream,
                     server_hostname: str) -> trio.SSLStream[trio.abc.Stream]:
    """A TLS client over *transport* that trusts the tailnet's CA and nothing else."""
    tls = trio.SSLStream(transport, tailnet.ssl_context(), server_hostname=server_hostname)
    await tls.do_handshake()
    return tls


async def exchange(stream: trio.abc.Stream, data: bytes) -> bytes:
    """Sends *data*, returns as many bytes of the answer (a bounded wait)."""
    got = b""
    with trio.fail_after(30):
        await stream.send_all(data)
        while len(got) < len(data):
            chunk = await stream.receive_some()
            assert chunk, f"closed after {got!r}"
            got += chunk
    return got


def names(cert: dict, field: str) -> dict[str, str]:
    return {k: v for rdn in cert[field] for k, v in rdn}


async def test_listen_tls_certificate_from_the_local_ca(tailnet, tailnet_node):
    async with tailnet_node("web") as web, tailnet_node("client") as client:
        assert await web.cert_domains() == ("web.tailnet.test",)
        listener = await web.listen_tls(443)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, echo_upper, [listener])
            start = trio.current_time()
            # The first handshake waits for the certificate: DNS-01 through control, the
            # tailnet's DNS server and its ACME server.
            with trio.fail_after(FIRST_CERT_WITHIN):
                tls = await tls_client(tailnet, await client.dial("web", 443), "web.tailnet.test")
            print(f"first certificate and handshake in {trio.current_time() - start:.2f} s")
            # The context trusts only tailnet.ca_cert, so the chain leads to it; the leaf is
            # for the node's name and comes from the CA's intermediate.
            cert = tls.getpeercert()
            assert cert["subjectAltName"] == (("DNS", "web.tailnet.test"),)
            assert "Pebble Intermediate" in names(cert, "issuer")["commonName"]
            assert await exchange(tls, b"hello over tls") == b"HELLO OVER TLS"
            assert await exchange(tls, b"and back again") == b"AND BACK AGAIN"
            await tls.aclose()

            # A client with the system's trust refuses it: the CA is the tailnet's alone.
            default = trio.SSLStream(await client.dial("web", 443), ssl.create_default_context(),
                                     server_hostname="web.tailnet.test")
            with pytest.raises(trio.BrokenResourceError):
                await default.do_handshake()
            await trio.aclose_forcefully(default)
            nursery.cancel_scope.cancel()


async def test_a_certificate_from_an_earlier_tailnet_is_never_served(tmp_path):
    """Same state directory, a new tailnet (so a new CA): the node gets a new certificate
    instead of serving the one cached in <state_dir>/certs."""
    state = tmp_path / "web"
    leaves = []
    for _ in range(2):
        async with local_tailnet(https=True) as tailnet, \
                tailnet.node("web", state_dir=state, ephemeral=False) as web, \
                tailnet.node("client") as client, trio.open_nursery() as nursery:
            listener = await web.listen_tls(443)
            nursery.start_soon(trio.serve_listeners, echo_upper, [listener])
            with trio.fail_after(30):
                tls = await tls_client(tailnet, await client.dial("web", 443), "web.tailnet.test")
            leaves.append(tls.getpeercert(binary_form=True))
            assert await exchange(tls, b"fresh") == b"FRESH"
            await tls.aclose()
            nursery.cancel_scope.cancel()
    assert leaves[0] != leaves[1]


async def test_httpx_https_through_the_tailnet(tailnet, tailnet_node):
    async with tailnet_node("web") as web, tailnet_node("client") as client:
        listener = await web.listen_tls(443)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve_http_on, listener)
            transport = TailnetTransport(client, verify=tailnet.ssl_context())
            async with httpx.AsyncClient(transport=transport) as http:
                response = await http.get("https://web.tailnet.test/hello")
            assert response.status_code == 200
            assert response.text == "secure /hello"
            nursery.cancel_scope.cancel()


async def _serve_http_on(listener: tsproc.TailnetListener) -> None:
    """A minimal HTTP/1.0 server over an already-TLS-terminated listener (listen_tls)."""
    async def handle(stream: tsproc.TailnetStream) -> None:
        async with stream:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = await stream.receive_some()
                if not chunk:
                    return
                request += chunk
            path = request.split(b" ", 2)[1].decode()
            body = f"secure {path}".encode()
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                  b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
                                  + body)

    await trio.serve_listeners(handle, [listener])


async def test_cert_pair_served_by_hypercorn(tailnet, tailnet_node):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body",
                    "body": f"{scope['scheme']} {scope['client'][0]}".encode()})

    async with tailnet_node("web") as web, tailnet_node("client") as client:
        cert_pem, key_pem = await web.cert_pair("web.tailnet.test")
        assert cert_pem.startswith(b"-----BEGIN CERTIFICATE-----")
        assert b"PRIVATE KEY" in key_pem
        with tempfile.TemporaryDirectory() as tmp:
            certfile, keyfile = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
            certfile.write_bytes(cert_pem)
            keyfile.touch(0o600)
            keyfile.write_bytes(key_pem)
            config = Config()
            config.certfile, config.keyfile = str(certfile), str(keyfile)
            async with trio.open_nursery() as nursery:
                url = await nursery.start(partial(tsproc.asgi.serve, app, web, 8443,
                                                  config=config))
                assert url == "https://web:8443/"
                transport = TailnetTransport(client, verify=tailnet.ssl_context())
                async with httpx.AsyncClient(transport=transport) as http:
                    response = await http.get("https://web.tailnet.test:8443/")
                assert response.status_code == 200
                assert response.text == f"https {client.tailscale_ips[0]}"
                nursery.cancel_scope.cancel()


async def test_a_tls_listener_is_opened_again_after_a_helper_restart(tailnet, tailnet_node):
    """After a restart the node opens its listeners in the new helper; listen_tls waits there
    (timeout_ms), with a deadline of the node's own since no caller waits for it."""
    async with tailnet_node("web") as web, tailnet_node("client") as client, \
            trio.open_nursery() as nursery:
        listener = await web.listen_tls(443)
        nursery.start_soon(trio.serve_listeners, echo_upper, [listener])
        events = web.events()
        os.kill((await web.status()).helper_pid, signal.SIGKILL)
        with trio.fail_after(30):
            async for event in events:
                if isinstance(event, tsproc.HelperRestartedEvent):
                    break
            while True:  # the new helper may not have reopened port 443 yet
                try:
                    stream = await client.dial("web", 443)
                except tsproc.DialError:
                    await trio.sleep(0.1)
                    continue
                try:
                    tls = await tls_client(tailnet, stream, "web.tailnet.test")
                    break
                except trio.BrokenResourceError:
                    await stream.aclose()
                    await trio.sleep(0.1)
        assert await exchange(tls, b"again") == b"AGAIN"
        await tls.aclose()
        nursery.cancel_scope.cancel()


async def _hold_silently(stream: trio.SocketStream) -> None:
    async with stream:
        await trio.sleep_forever()


async def test_cert_pair_gives_the_helper_the_callers_deadline(tailnet, tailnet_node):
    """cert_pair waits in the helper (here for an ACME server that accepts and never answers).
    The helper is given the caller's deadline as timeout_ms and answers ``timeout`` when it
    passes: the caller's own scope is lifted once the request is out, so the only deadline
    left is the one the helper was given (without it, the host's hang bound would fire
    seconds later, with a NodeTimeoutError that is no RemoteError)."""
    async with trio.open_nursery() as nursery:
        silent = await nursery.start(partial(trio.serve_tcp, _hold_silently, 0, host="127.0.0.1"))
        port = silent[0].socket.getsockname()[1]
        async with tailnet_node("waiting", acme_directory_url=f"https://127.0.0.1:{port}/dir") \
                as node:
            (domain,) = await node.cert_domains()
            with trio.CancelScope(deadline=trio.current_time() + 2) as scope:
                async with trio.open_nursery() as lifter:

                    async def lift() -> None:
                        await trio.testing.wait_all_tasks_blocked()
                        scope.deadline = math.inf

                    lifter.start_soon(lift)
                    with pytest.raises(tsproc.NodeTimeoutError) as info:
                        await node.cert_pair(domain)
            assert isinstance(info.value, tsproc.RemoteError), info.value
            assert info.value.code == "timeout"
            assert "no answer within" in str(info.value)
            # The helper is not left waiting: the node answers at once.
            with trio.fail_after(10):
                assert (await node.status()).backend_state == "Running"
        nursery.cancel_scope.cancel()


async def test_funnel_from_a_plain_loopback_client(tailnet, tailnet_node):
    async with tailnet_node("web") as web, tailnet_node("client") as client:
        status = await web.status()
        # The ingress node is a peer, and says what it is.
        (ingress,) = [p for p in status.peers if p.hostname == tailnet.ingress_hostname]
        assert ingress.tags == ("tag:funnel-ingress",)

        listener = await web.listen_funnel(443)
        only = await web.listen_funnel(8443, funnel_only=True)
        accepted: list[tsproc.TailnetStream] = []

        async def handle(stream: tsproc.TailnetStream) -> None:
            accepted.append(stream)
            await echo_upper(stream)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, handle, [listener, only])
            for port in (443, 8443):
                host, public_port = tailnet.funnel_address(web, port)
                tcp = await trio.open_tcp_stream(host, public_port)
                client_addr = tcp.socket.getsockname()
                with trio.fail_after(30):
                    tls = await tls_client(tailnet, tcp, tailnet.dns_name(web))
                assert await exchange(tls, b"from the internet") == b"FROM THE INTERNET"
                await tls.aclose()
                stream = accepted[-1]
                assert stream.via_funnel
                assert stream.remote_addr == (client_addr[0], client_addr[1])
                with pytest.raises(tsproc.NotFoundError, match="Funnel"):
                    await web.whois(stream.remote_addr)

            # From the tailnet: port 443 (funnel and tailnet) takes it, 8443 (funnel only) not.
            tailnet_stream = await tls_client(tailnet, await client.dial("web", 443),
                                              "web.tailnet.test")
            assert await exchange(tailnet_stream, b"from the tailnet") == b"FROM THE TAILNET"
            assert not accepted[-1].via_funnel
            await tailnet_stream.aclose()
            count = len(accepted)
            with pytest.raises((tsproc.DialError, trio.BrokenResourceError)), trio.fail_after(30):
                refused = await client.dial("web", 8443)
                await tls_client(tailnet, refused, "web.tailnet.test")
            assert len(accepted) == count
            nursery.cancel_scope.cancel()


async def test_a_funnel_client_may_connect_before_the_ingress_knows_the_node(tailnet,
                                                                            tailnet_node):
    """A client that connects the moment listen_funnel returns may reach the ingress before its
    netmap has the node (or the node's peerAPI port, which comes in a later update): the
    ingress waits for the node instead of closing the connection. The test makes that moment
    certain: the ClientHello names a node that does not exist yet. (Which then appears before
    its Funnel listener does: the ingress takes its refusals as "not ready" too, since the node
    was not there when the client came; a first version of this test without that failed
    under load.)"""
    host, public_port = tailnet.funnel_address("late", 443)
    tcp = await trio.open_tcp_stream(host, public_port)
    async with trio.open_nursery() as nursery:
        tls_done: list[trio.SSLStream[trio.abc.Stream]] = []

        async def handshake() -> None:
            tls_done.append(await tls_client(tailnet, tcp, tailnet.dns_name("late")))

        nursery.start_soon(handshake)
        await trio.sleep(0.3)  # the ingress has read the ClientHello and looked for the node
        async with tailnet_node("late") as late, await late.listen_funnel(443) as listener:
            nursery.start_soon(trio.serve_listeners, echo_upper, [listener])
            with trio.fail_after(30):
                while not tls_done:
                    await trio.sleep(0.01)
            assert await exchange(tls_done[0], b"early") == b"EARLY"
            await tls_done[0].aclose()
            nursery.cancel_scope.cancel()


async def test_asgi_over_funnel_has_the_public_client_and_no_identity(tailnet, tailnet_node):
    seen: list[dict] = []

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        seen.append({"client": scope["client"], "headers": dict(scope["headers"]),
                     "whois": tsproc.asgi.scope_whois(scope)})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async with tailnet_node("web") as web, tailnet_node("client") as client, \
            trio.open_nursery() as nursery:
        url = await nursery.start(partial(tsproc.asgi.serve, app, web, 443, funnel=True))
        assert url == "https://web:443/"
        host, port = tailnet.funnel_address(web, 443)
        tcp = await trio.open_tcp_stream(host, port)
        public = tcp.socket.getsockname()
        with trio.fail_after(30):
            tls = await tls_client(tailnet, tcp, "web.tailnet.test")
            # A forged identity header from the internet must not get through either.
            await tls.send_all(b"GET / HTTP/1.1\r\nHost: web.tailnet.test\r\n"
                               b"Tailscale-User-Login: forged@example.com\r\n"
                               b"Connection: close\r\n\r\n")
            assert b"200" in await tls.receive_some()
        await trio.aclose_forcefully(tls)
        (funnel_request,) = seen
        assert funnel_request["client"] == (public[0], public[1])
        assert funnel_request["whois"] is None
        assert b"tailscale-user-login" not in funnel_request["headers"]

        # The same listener from the tailnet: the peer's identity is there.
        transport = TailnetTransport(client, verify=tailnet.ssl_context())
        async with httpx.AsyncClient(transport=transport) as http:
            assert (await http.get("https://web.tailnet.test/")).status_code == 200
        assert seen[-1]["whois"].node.hostname == "client"
        nursery.cancel_scope.cancel()


async def test_subnet_route_reaches_listen_any_port(tailnet, tailnet_node):
    async with tailnet_node("router", advertise_routes=["10.77.0.0/24"]) as router, \
            tailnet_node("client") as client:
        listener = await router.listen_any_port()
        local_addrs: list[tuple[str, int]] = []

        async def handle(stream: tsproc.TailnetStream) -> None:
            local_addrs.append(stream.local_addr)
            await echo_upper(stream)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, handle, [listener])
            # The route is approved and reaches the client's netmap in the background.
            stream = await _dial_when_routed(client, "10.77.0.5", 80)
            assert await exchange(stream, b"routed") == b"ROUTED"
            await stream.aclose()
            stream = await client.dial("10.77.0.200", 5432)
            assert await exchange(stream, b"another") == b"ANOTHER"
            await stream.aclose()
            assert local_addrs == [("10.77.0.5", 80), ("10.77.0.200", 5432)]
            peer = next(p for p in (await client.status()).peers if p.hostname == "router")
            assert peer.primary_routes == ("10.77.0.0/24",)
            # Outside every route: not on the tailnet.
            with pytest.raises(tsproc.DialError), trio.fail_after(30):
                await client.dial("10.78.0.5", 80)
            nursery.cancel_scope.cancel()


async def _dial_when_routed(client: tsproc.Node, host: str, port: int) -> tsproc.TailnetStream:
    with trio.fail_after(30):
        while True:
            try:
                with trio.move_on_after(5):
                    return await client.dial(host, port)
            except tsproc.DialError:
                await trio.sleep(0.2)


async def test_the_plain_local_tailnet_still_refuses_tls_and_funnel():
    async with local_tailnet() as plain, plain.node("web") as web:
        assert await web.cert_domains() == ()
        with pytest.raises(tsproc.TlsUnavailableError):
            await web.listen_tls(443)
        with pytest.raises((tsproc.TlsUnavailableError, tsproc.FunnelUnavailableError)):
            await web.listen_funnel(443)
        with pytest.raises(tsproc.TlsUnavailableError):
            await web.cert_pair("web.tailnet.test")
        with pytest.raises(tsproc.TlsUnavailableError):
            _ = plain.ca_cert
        with pytest.raises(tsproc.TlsUnavailableError):
            plain.funnel_address(web, 443)
        assert plain.ingress_hostname is None
        assert (await web.status()).peers == ()



async def test_the_readme_https_example_passes_as_written(tmp_path):
    """The README's "HTTPS and Funnel, offline" test file, verbatim, in a fresh pytest (which
    inherits this run's offline namespace)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    (block,) = [b for b in blocks if b.startswith("# test_https_offline.py\n")]
    (tmp_path / "test_https_offline.py").write_text(block)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    with trio.fail_after(120):
        result = await trio.run_process(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_https_offline.py"],
            cwd=tmp_path, env=env, capture_stdout=True, capture_stderr=True, check=False,
        )
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    assert re.search(r"\b1 passed\b", output), output
