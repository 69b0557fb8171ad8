"""tsnet's newer surface from asyncio and from blocking code, on a real local tailnet:
a Tailscale Service hosted through a face's listener, an exit node set and cleared, and a
packet capture held for a face's ``with``."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

import tsproc
import tsproc.aio
import tsproc.blocking

pytestmark = pytest.mark.offline  # dials to a documentation address: nothing may leave

TARGET = ("198.51.100.7", 80)  # TEST-NET-2: reachable only through the exit node
PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"}


@pytest.fixture(scope="module")
def net():
    with tsproc.blocking.local_tailnet() as tailnet:
        yield tailnet


def test_service_exit_node_and_capture_under_asyncio(net, tmp_path):
    def node(hostname: str, **kwargs) -> tsproc.aio.Node:
        return tsproc.aio.Node(hostname, **net._node_kwargs(kwargs))

    async def answer(listener: tsproc.aio.Listener, text: bytes) -> None:
        async for _, writer in listener:
            writer.write(text)
            writer.close()

    async def first_answer(client: tsproc.aio.Node, host: str, port: int) -> bytes:
        async with asyncio.timeout(60):  # until the netmap has the route (approval is quick)
            while True:
                try:
                    async with asyncio.timeout(5):
                        reader, writer = await client.dial(host, port)
                        data = await reader.read()
                        writer.close()
                        if data:
                            return data
                except (tsproc.DialError, TimeoutError, ConnectionError):
                    pass
                await asyncio.sleep(0.2)

    async def main() -> None:
        async with node("asvc", tags=["tag:web"]) as host, \
                node("aexit", advertise_exit_node=True) as exit_node, \
                node("asvccli") as client:
            async with await host.listen_service("svc:aweb", 8080) as service, \
                    await exit_node.listen_any_port() as any_port:
                tasks = [asyncio.create_task(answer(service, b"service")),
                         asyncio.create_task(answer(any_port, b"via the exit node"))]
                assert await first_answer(client, "svc:aweb", 8080) == b"service"

                with pytest.raises(tsproc.DialError):
                    await client.dial(*TARGET)
                await client.set_exit_node("aexit")
                pcap = tmp_path / "aio.pcap"
                async with client.capture_pcap(pcap):
                    assert await first_answer(client, *TARGET) == b"via the exit node"
                assert pcap.read_bytes()[:4] in PCAP_MAGIC and pcap.stat().st_size > 100
                await client.set_exit_node(None)
                with pytest.raises(tsproc.DialError):
                    await client.dial(*TARGET)
                for task in tasks:
                    task.cancel()
            async with node("auntagged") as untagged:
                with pytest.raises(tsproc.UntaggedServiceHostError):
                    await untagged.listen_service("svc:aweb", 8080)

    asyncio.run(main())


def test_service_exit_node_and_capture_from_blocking_code(net, tmp_path):
    def serve(listener: tsproc.blocking.Listener, text: bytes) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:  # closed
                return
            with sock:
                sock.sendall(text)

    def first_answer(client: tsproc.blocking.Node, host: str, port: int) -> bytes:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(tsproc.DialError, TimeoutError, ConnectionError), \
                    client.dial(host, port, timeout=5) as sock:
                sock.settimeout(5)
                if data := sock.recv(100):
                    return data
            time.sleep(0.2)
        raise AssertionError(f"no answer from {host}:{port}")

    with net.node("bsvc", tags=["tag:web"]) as host, \
            net.node("bexit", advertise_exit_node=True) as exit_node, \
            net.node("bsvccli") as client, \
            host.listen_service("svc:bweb", 8080) as service, \
            exit_node.listen_any_port() as any_port:
        for listener, text in ((service, b"service"), (any_port, b"via the exit node")):
            threading.Thread(target=serve, args=(listener, text), daemon=True).start()
        assert first_answer(client, "svc:bweb", 8080) == b"service"
        with pytest.raises(tsproc.DialError):
            client.dial(*TARGET, timeout=10)
        client.set_exit_node("bexit", timeout=30)
        pcap = tmp_path / "blocking.pcap"
        with client.capture_pcap(pcap, timeout=30):
            assert first_answer(client, *TARGET) == b"via the exit node"
        assert pcap.read_bytes()[:4] in PCAP_MAGIC and pcap.stat().st_size > 100
        client.set_exit_node(None, timeout=30)
        with pytest.raises(tsproc.DialError):
            client.dial(*TARGET, timeout=10)
