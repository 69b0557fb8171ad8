"""The whole node under asyncio, on a real local tailnet (with certificates and Funnel):
listeners of every kind, UDP both ways, TLS with a verified client, Funnel from a client off the
tailnet, cert_pair, logout, an interactive login while ``wait_running()`` waits, httpx and
aiohttp over the tailnet, and the promises on the new calls (a helper SIGKILL mid-read raises,
cancellation and Ctrl-C leak nothing).

Plain functions that call ``asyncio.run``; the tailnet runs in a trio thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import aiohttp
import httpx
import pytest

import tsproc
import tsproc.aio
import tsproc.aiohttp
import tsproc.blocking
import tsproc.httpx
from tests.faces import Script, Snapshot, akill_mid_read, check_ctrl_c, kill

pytestmark = pytest.mark.offline  # the tailnet issues certificates (see tests/test_https.py)

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"


@pytest.fixture(scope="module")
def net():
    with tsproc.blocking.local_tailnet(https=True) as tailnet:
        yield tailnet


def aio_node(net, hostname: str, **kwargs) -> tsproc.aio.Node:
    """An asyncio node on the module's (blocking-face) tailnet, with its certificates."""
    return tsproc.aio.Node(hostname, **net._node_kwargs(kwargs))


async def answer_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every HTTP/1.1 request on the connection with 'hello'."""
    try:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve_listener(listener: tsproc.aio.Listener, **accept) -> None:
    """Serves *listener* with answer_http until cancelled."""
    tasks = set()
    try:
        while True:
            reader, writer = await listener.accept(**accept)
            task = asyncio.create_task(answer_http(reader, writer))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in tasks:
            task.cancel()


def test_listen_accept_any_port_and_udp_both_ways(net):
    async def main() -> None:
        async with aio_node(net, "asrv") as server, aio_node(net, "acli") as client:
            async with await server.listen(7) as listener:
                assert listener.port == 7
                reader, writer = await client.dial("asrv", 7)
                accepted_reader, accepted_writer = await listener.accept()
                assert accepted_writer.remote_addr[0] == str(client.tailscale_ips[0])
                who = await server.whois(accepted_writer.remote_addr)
                assert who.node.hostname == "acli"
                writer.write(b"ping")
                writer.write_eof()
                assert await accepted_reader.read() == b"ping"  # a clean, confirmed EOF
                accepted_writer.write(b"pong")
                accepted_writer.close()
                assert await reader.read() == b"pong"
                writer.close()
            with pytest.raises(OSError, match="closed"):
                await listener.accept()
            assert [pair async for pair in listener] == []  # a closed listener ends iteration
            with pytest.raises(tsproc.AddressInUseError):
                async with await server.listen(8), await server.listen(8):
                    pass

            async with await server.listen_any_port() as any_port:
                assert any_port.port == 0
                _, writer = await client.dial("asrv", 4242)
                _, accepted = await any_port.accept()
                assert accepted.local_addr == (str(server.tailscale_ips[0]), 4242)
                writer.close()
                accepted.close()

            async with await server.listen_packet(5353) as listening, \
                    await client.dial_udp("asrv", 5353) as dialled:
                assert listening.local_addr == (str(server.tailscale_ips[0]), 5353)
                assert dialled.remote_addr == (str(server.tailscale_ips[0]), 5353)
                await dialled.send(b"question")
                async with asyncio.timeout(10):
                    data, source = await listening.recvfrom()
                assert (data, source[0]) == (b"question", str(client.tailscale_ips[0]))
                await listening.sendto(b"answer", source)
                async with asyncio.timeout(10):
                    assert await dialled.receive() == b"answer"
                # And the listening side first, to an address: both directions start either way.
                async with await client.listen_packet(0) as back:
                    await listening.sendto(b"hi", back.local_addr)
                    async with asyncio.timeout(10):
                        assert await back.recvfrom() == (b"hi", listening.local_addr)
            assert server.backend_state == "Running"
            assert server.health == ()
            assert server.auth_url == ""
            assert server.state_dir is not None and server.ephemeral

    asyncio.run(main())


def test_listen_tls_with_verified_clients_httpx_and_aiohttp(net):
    async def main() -> None:
        async with aio_node(net, "atls") as web, aio_node(net, "avisit") as client:
            domain = net.dns_name(web)
            assert await web.cert_domains() == (domain,)
            async with await web.listen_tls(443) as tls:
                serving = asyncio.create_task(serve_listener(tls))
                # asyncio's own TLS over a tailnet dial, verified against the tailnet's CA.
                reader, writer = await client.dial("atls", 443, ssl=net.ssl_context(),
                                                   server_hostname=domain)
                peer = writer.get_extra_info("ssl_object").getpeercert()
                assert ("DNS", domain) in peer["subjectAltName"]
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await reader.readexactly(len(RESPONSE))).endswith(b"hello")
                writer.close()
                # A client that trusts only the system's CAs refuses it.
                with pytest.raises(ssl.SSLCertVerificationError):
                    await client.dial("atls", 443, ssl=True, server_hostname=domain)

                transport = tsproc.httpx.TailnetTransport(client, verify=net.ssl_context())
                async with httpx.AsyncClient(transport=transport) as http:
                    for _ in range(2):  # the second request reuses the kept-alive connection
                        response = await http.get(f"https://{domain}/")
                        assert (response.status_code, response.text) == (200, "hello")
                    with pytest.raises(httpx.ConnectError):
                        await http.get("https://no-such-node/")

                connector = tsproc.aiohttp.TailnetConnector(client, ssl=net.ssl_context())
                async with aiohttp.ClientSession(connector=connector) as session:
                    async with session.get(f"https://{domain}/") as response:
                        assert (response.status, await response.text()) == (200, "hello")
                    async with session.get(f"https://{domain}/") as response:
                        assert await response.text() == "hello"
                    with pytest.raises(aiohttp.ClientConnectorCertificateError):
                        await session.get(f"https://{domain}/", ssl=ssl.create_default_context())
                    with pytest.raises(aiohttp.ClientConnectorError):
                        await session.get("http://no-such-node/")
                serving.cancel()

    asyncio.run(main())


def test_httpx_http2_and_cert_pair_with_tls_in_the_loop(net, tmp_path):
    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = scope["http_version"].encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def main() -> None:
        async with aio_node(net, "ah2") as web, aio_node(net, "ah2cli") as client:
            stop = asyncio.Event()
            started = asyncio.get_running_loop().create_future()
            serving = asyncio.create_task(tsproc.aio.serve_asgi(
                app, web, 80, shutdown_trigger=stop.wait, on_started=started.set_result))
            await started
            # HTTP/2 with prior knowledge (h2c) and HTTP/1.1, through httpx under asyncio.
            h2 = tsproc.httpx.TailnetTransport(client, http1=False, http2=True)
            async with httpx.AsyncClient(transport=h2) as http:
                response = await http.get("http://ah2/")
                assert (response.http_version, response.text) == ("HTTP/2", "2")
            async with httpx.AsyncClient(transport=tsproc.httpx.TailnetTransport(client)) as http:
                assert (await http.get("http://ah2/")).text == "1.1"
            stop.set()
            await serving

            # cert_pair: TLS terminated in this loop with the node's own certificate.
            domain = net.dns_name(web)
            cert, key = await web.cert_pair(domain)
            assert cert.startswith(b"-----BEGIN CERTIFICATE-----") and b"PRIVATE KEY" in key
            (tmp_path / "cert.pem").write_bytes(cert)
            (tmp_path / "key.pem").write_bytes(key)
            server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
            async with await tsproc.aio.serve(answer_http, web, 8443, ssl=server_context):
                reader, writer = await client.dial("ah2", 8443, ssl=net.ssl_context(),
                                                   server_hostname=domain)
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await reader.readexactly(len(RESPONSE))).endswith(b"hello")
                writer.close()
            with pytest.raises(tsproc.TlsUnavailableError):
                await web.cert_pair("other.example.com")

    asyncio.run(main())


def test_funnel_from_a_client_off_the_tailnet(net):
    async def main() -> None:
        async with aio_node(net, "afun") as web, \
                await web.listen_funnel(443, funnel_only=True) as funnel:
            serving = asyncio.create_task(serve_listener(funnel))
            host, port = net.funnel_address(web, 443)
            # A plain asyncio TLS client on loopback: "the internet".
            reader, writer = await asyncio.open_connection(
                host, port, ssl=net.ssl_context(), server_hostname=net.dns_name(web))
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.readexactly(len(RESPONSE))).endswith(b"hello")
            writer.close()
            serving.cancel()

    asyncio.run(main())


def test_logout_leaves_the_tailnet(net):
    async def main() -> None:
        async with aio_node(net, "aleaver") as node:
            await node.logout()
            async with asyncio.timeout(10):
                while (await node.status()).backend_state == "Running":
                    await asyncio.sleep(0.1)

    asyncio.run(main())


def test_an_interactive_login_completes_while_wait_running_waits():
    async def main() -> None:
        async with tsproc.aio.local_tailnet(interactive_login=True) as tailnet, \
                tailnet.node("awaiter", wait_running=False, up_timeout=None) as node:
            assert node.state is not tsproc.NodeState.RUNNING
            waiting = asyncio.create_task(node.wait_running())
            async with asyncio.timeout(30):
                url = node.auth_url
                if not url:
                    async with node.events() as events:
                        async for event in events:
                            if isinstance(event, tsproc.AuthUrlEvent):
                                url = event.url
                                break
                assert not waiting.done()
                await tailnet.complete_login(url)
                await waiting
            assert node.state is tsproc.NodeState.RUNNING
            assert node.auth_url == ""

    asyncio.run(main())


def test_helper_sigkill_mid_read_of_an_accepted_stream_raises(net):
    async def main() -> None:
        async with aio_node(net, "akilled") as victim, aio_node(net, "afar") as far, \
                await victim.listen(7) as listener:
            _, writer = await far.dial("akilled", 7)
            reader, accepted = await listener.accept()
            writer.write(b"first half")
            assert await reader.readexactly(10) == b"first half"
            await akill_mid_read(victim.helper_pid, reader)
            accepted.close()
            writer.close()

    asyncio.run(main())


def test_cancelled_accepts_and_listens_leak_nothing(net):
    async def main() -> None:
        async with aio_node(net, "acancel") as node, aio_node(net, "adialer") as dialer:
            async with await node.listen(7) as warm:  # warm: the helper's first listener
                pass
            baseline = Snapshot.take()
            # A port each: a listen cancelled once its answer was on the way releases the
            # port soon after, not at once (as under trio).
            for port, delay in enumerate((0, 0.001, 0.005, 0.02), start=20):
                try:
                    async with asyncio.timeout(delay):
                        listener = await node.listen(port)
                except TimeoutError:
                    continue
                async with listener:
                    with pytest.raises(TimeoutError):
                        async with asyncio.timeout(delay + 0.05):
                            await listener.accept()
            # A connection that arrives after its accept was cancelled is not lost or leaked.
            async with await node.listen(10) as listener:
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await listener.accept()
                _, writer = await dialer.dial("acancel", 10)
                _, accepted = await listener.accept()
                accepted.close()
                writer.close()
            async with asyncio.timeout(60):
                while node._runtime.conns:
                    await asyncio.sleep(0.05)
            await baseline.await_nothing_leaked()
            assert warm.port == 7

    asyncio.run(main())


CTRL_C_SCRIPT = """
import asyncio, sys, tsproc.aio

async def main():
    async with tsproc.aio.Node("actrlc2", control_url=sys.argv[1], ephemeral=True) as node:
        print("helper:", node.helper_pid, flush=True)
        listener = await node.listen(7)
        packets = await node.listen_packet(53)
        print("ready:", flush=True)
        if sys.argv[2] == "accept":
            await listener.accept()
        else:
            await packets.recvfrom()

asyncio.run(main())
"""


@pytest.mark.parametrize("blocked_in", ["accept", "recvfrom"])
def test_ctrl_c_in_accept_or_recvfrom_exits_with_keyboardinterrupt(net, blocked_in):
    check_ctrl_c(Script(CTRL_C_SCRIPT, net.control_url, blocked_in))


def test_a_body_read_to_the_end_of_the_connection_is_never_cut_short_silently(net):
    """A response without a length ends where the connection ends: a helper killed mid-body
    must fail the request (aiohttp, httpx), not hand over the part that arrived as the whole."""

    async def main() -> None:
        # A client node for each library: a restarted helper's first dial can take seconds.
        async with aio_node(net, "abody") as server, aio_node(net, "areader") as client, \
                aio_node(net, "areader2") as client2:
            async def partial(reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\npartial")
                await writer.drain()
                with contextlib.suppress(ConnectionError):  # the client's helper is killed
                    await reader.read()  # hold the connection open, the body unfinished
                writer.close()

            async with await tsproc.aio.serve(partial, server, 80):
                connector = tsproc.aiohttp.TailnetConnector(client)
                async with aiohttp.ClientSession(connector=connector) as session, \
                        session.get("http://abody/") as response:
                    assert await response.content.readexactly(7) == b"partial"
                    kill(client.helper_pid)
                    with pytest.raises(aiohttp.ClientPayloadError):
                        async with asyncio.timeout(60):
                            await response.read()

                transport = tsproc.httpx.TailnetTransport(client2)
                async with httpx.AsyncClient(transport=transport, timeout=30) as http, \
                        http.stream("GET", "http://abody/") as response:
                    chunks = response.aiter_raw()
                    assert await anext(chunks) == b"partial"
                    kill(client2.helper_pid)
                    with pytest.raises(httpx.ReadError):
                        async with asyncio.timeout(60):
                            async for _ in chunks:
                                pass

    asyncio.run(main())
