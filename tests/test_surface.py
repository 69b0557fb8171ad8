"""The rest of tsnet's surface: interactive login, UDP, any-port listeners, TLS/Funnel errors,
ping, peers and tags — on a real local tailnet."""

from __future__ import annotations

import ipaddress
import struct

import pytest
import trio

import tsproc
from tsproc.testing import LocalTailnet, local_tailnet


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    chunks = []
    while chunk := await stream.receive_some(65536):
        chunks.append(chunk)
    return b"".join(chunks)


async def log_in_when_asked(tailnet: LocalTailnet, events: tsproc.EventStream,
                            seen: list[str]) -> None:
    async for event in events:
        if isinstance(event, tsproc.AuthUrlEvent):
            seen.append(event.url)
            await tailnet.complete_login(event.url)
            return


async def test_interactive_login_emits_an_auth_url_and_then_serves():
    # The server node returns early (wait_running=False); the test logs in as a person would.
    async with (
        local_tailnet(interactive_login=True) as tailnet,
        tailnet.node("waiter", wait_running=False, up_timeout=None) as server,
    ):
        assert server.state is not tsproc.NodeState.RUNNING
        urls: list[str] = []
        with trio.fail_after(30):
            # It may have asked before we subscribed: the property has the URL too.
            if server.auth_url:
                urls.append(server.auth_url)
                await tailnet.complete_login(server.auth_url)
            else:
                await log_in_when_asked(tailnet, server.events(), urls)
            await server.wait_running()
        assert urls and urls[0].startswith(tailnet.control_url + "/auth/")
        assert server.state is tsproc.NodeState.RUNNING
        assert server.auth_url == ""

        # The default (wait under the caller's cancel scope) for the second node, with a
        # task that completes its login from the event stream.
        client = tailnet.node("visitor", up_timeout=None)
        events = client.events()  # subscribed before it starts: no event is missed
        listener = await server.listen(80)

        async def serve_one() -> None:
            stream = await listener.accept()
            await stream.send_all(b"logged in")
            await stream.aclose()

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(log_in_when_asked, tailnet, events, urls)
                nursery.start_soon(serve_one)
                async with client:  # waits, under our cancel scope, for the login
                    stream = await client.dial("waiter", 80)
                    assert await read_all(stream) == b"logged in"
                    await stream.aclose()
        assert len(urls) == 2


def datagram(i: int) -> bytes:
    size = 1 + (i * 7919) % 1200  # 1 .. 1200 bytes, varied
    body = struct.pack(">I", i) + bytes([i % 251]) * 1200
    return body[:size] if size >= 4 else bytes([i % 251]) * size


def check_datagram(data: bytes) -> int | None:
    """The index a datagram carries if it is intact, else None."""
    if len(data) >= 4:
        (i,) = struct.unpack(">I", data[:4])
        return i if data == datagram(i) else None
    # Tiny datagrams carry no index: they are intact if uniform and of an expected size.
    return -1 if len(set(data)) <= 1 else None


UDP_WINDOW = 256


async def test_10000_udp_datagrams_arrive_intact_with_their_source(tailnet_node):
    async with tailnet_node("udp-a") as a, tailnet_node("udp-b") as b:
        async with await a.listen_packet(5000) as pa, await b.listen_packet(5001) as pb:
            assert pa.local_addr == (str(a.tailscale_ips[0]), 5000)
            received: list[tuple[bytes, tuple[str, int]]] = []
            done = trio.Event()

            async def receive() -> None:
                with trio.move_on_after(60):
                    while len(received) < 10_000:
                        received.append(await pa.recvfrom())
                done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                target = (str(a.tailscale_ips[0]), 5000)
                # UDP has no flow control: the sender keeps at most WINDOW datagrams not yet
                # received, so that what is lost was lost in transit, not dropped by queues a
                # busy machine did not drain in time. A wait that sees no progress writes the
                # missing datagrams off as lost instead of waiting for them again.
                written_off = 0
                for i in range(10_000):
                    deadline = trio.current_time() + 0.5
                    while i - len(received) - written_off >= UDP_WINDOW:
                        if trio.current_time() > deadline:
                            written_off = i - len(received)
                            break
                        await trio.sleep(0.001)
                    await pb.sendto(datagram(i), target)
                with trio.move_on_after(3):
                    await done.wait()
                nursery.cancel_scope.cancel()

        sizes_ok = all(1 <= len(d) <= 1200 for d, _ in received)
        assert sizes_ok
        bad = [d[:8] for d, _ in received if check_datagram(d) is None]
        assert not bad, f"{len(bad)} corrupted datagrams"
        assert {src for _, src in received} == {(str(b.tailscale_ips[0]), 5001)}
        indexes = [check_datagram(d) for d, _ in received]
        assert len(set(i for i in indexes if i is not None and i >= 0)) == len(
            [i for i in indexes if i is not None and i >= 0]), "duplicated datagrams"
        # UDP may drop; on loopback almost nothing should be lost.
        assert len(received) >= 9_000, f"only {len(received)} of 10000 arrived"


async def test_dial_udp_sends_to_a_listening_packet_socket_and_gets_the_reply(tailnet_node):
    async with tailnet_node("udp-server") as server, tailnet_node("udp-client") as client:
        async with (
            await server.listen_packet(5353) as listening,
            await client.dial_udp("udp-server", 5353) as dialled,
        ):
            assert dialled.remote_addr == (str(server.tailscale_ips[0]), 5353)
            await dialled.send(b"question")
            with trio.fail_after(10):
                data, source = await listening.recvfrom()
            assert data == b"question"
            assert source[0] == str(client.tailscale_ips[0])
            await listening.sendto(b"answer", source)
            with trio.fail_after(10):
                assert await dialled.receive() == b"answer"
        with pytest.raises(trio.ClosedResourceError):
            await dialled.receive()
        with pytest.raises(tsproc.InvalidArgumentError, match="tailnet IP"):
            await listening.sendto(b"x", ("udp-server", 1))


async def test_any_port_listener_gets_unlistened_ports_with_their_destination(tailnet_node):
    async with tailnet_node("anyport") as server, tailnet_node("caller") as client:
        catch_all = await server.listen_any_port()
        specific = await server.listen(4004)
        got: dict[int, bytes] = {}

        async def serve(listener: tsproc.TailnetListener, tag: bytes) -> None:
            while True:
                stream = await listener.accept()
                got[stream.local_addr[1]] = tag + await read_all(stream)
                await stream.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, catch_all, b"any:")
            nursery.start_soon(serve, specific, b"own:")
            for port in (4001, 4002, 4003, 4004):
                stream = await client.dial("anyport", port)
                assert stream.remote_addr == (str(server.tailscale_ips[0]), port)
                await stream.send_all(b"%d" % port)
                await stream.send_eof()
                await read_all(stream)
                await stream.aclose()
            with trio.fail_after(10):
                while len(got) < 4:
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
        assert got == {4001: b"any:4001", 4002: b"any:4002", 4003: b"any:4003",
                       4004: b"own:4004"}
        assert catch_all.port == 0


async def test_tls_and_funnel_fail_at_once_without_certificates(tailnet_node):
    async with tailnet_node("notls") as node:
        assert await node.cert_domains() == ()
        with trio.fail_after(10):
            with pytest.raises(tsproc.TlsUnavailableError, match="HTTPS certificates"):
                await node.listen_tls(443)
            with pytest.raises(tsproc.TlsUnavailableError, match="HTTPS certificates"):
                await node.listen_funnel(443, funnel_only=True)
        # The failures left nothing half-open: the ports are still free for plain TCP.
        listener = await node.listen(443)
        await listener.aclose()


async def test_ping_reports_latency_and_path_and_status_lists_the_peer(tailnet_node):
    async with tailnet_node("pinger") as a, tailnet_node("pingee") as b:
        # The first ping may wait for the first WireGuard handshake (retried after 5 s when
        # its first packet is lost): it proves reachability, the second measures the path.
        with trio.fail_after(20):
            await a.ping("pingee")
        result = await a.ping("pingee")
        assert result.ip == b.tailscale_ips[0]
        assert result.hostname == "pingee" and result.dns_name.startswith("pingee.")
        assert 0 < result.latency < 5
        assert result.direct or result.relay, result
        by_ip = await a.ping(str(b.tailscale_ips[0]))
        assert by_ip.ip == result.ip
        status = await a.status()
        peers = {p.hostname: p for p in status.peers}
        assert peers["pingee"].online
        assert peers["pingee"].tailscale_ips[0] == b.tailscale_ips[0]
        assert peers["pingee"].direct or peers["pingee"].relay
        with pytest.raises(tsproc.DialError, match="no node named"):
            await a.ping("nobody-here")


async def test_status_whois_and_ping_use_one_name_and_one_type_per_idea(tailnet_node):
    async with tailnet_node("asker") as a, tailnet_node("answerer") as b:
        listener = await b.listen(7)
        async with listener:
            stream = await a.dial("answerer", 7)
            async with stream, await listener.accept() as accepted:
                who = await b.whois(accepted.remote_addr)
        peer = {p.hostname: p for p in (await b.status()).peers}["asker"]
        with trio.fail_after(20):  # the first may wait for the first WireGuard handshake
            ping = await a.ping("answerer")
        answerer = {p.hostname: p for p in (await a.status()).peers}["answerer"]
    # The same node, through WhoIs and through status: the same fields, equal values.
    for name in ("id", "hostname", "dns_name", "tailscale_ips", "tags"):
        assert getattr(who.node, name) == getattr(peer, name), name
    assert all(isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)
               for ip in (*who.node.tailscale_ips, *peer.tailscale_ips, ping.ip))
    assert ping.ip in answerer.tailscale_ips
    assert (ping.hostname, ping.dns_name) == (answerer.hostname, answerer.dns_name)


async def test_advertised_tags_are_seen_by_peers(tailnet_node):
    async with (
        tailnet_node("tagged", tags=["tag:web", "tag:prod"]) as tagged,
        tailnet_node("observer") as observer,
    ):
        who = await observer.whois(str(tagged.tailscale_ips[0]))
        assert sorted(who.node.tags) == ["tag:prod", "tag:web"]
        seen = {p.hostname: p for p in (await observer.status()).peers}["tagged"]
        assert sorted(seen.tags) == ["tag:prod", "tag:web"]
    with pytest.raises(tsproc.InvalidArgumentError, match="tag"):
        tsproc.Node("bad", tags=["web"])


async def test_logout_leaves_the_tailnet(tailnet_node):
    async with tailnet_node("leaver") as node:
        await node.logout()
        with trio.fail_after(10):
            while (await node.status()).backend_state == "Running":
                await trio.sleep(0.1)
        assert (await node.status()).backend_state in ("NeedsLogin", "Stopped", "NoState")
