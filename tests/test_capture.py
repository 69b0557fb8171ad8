"""Node.capture_pcap: tsnet's packet capture in a pcap file that any reader decodes. The test
parses the file (no tcpdump on these machines) and finds the packets of a known connection."""

from __future__ import annotations

import ipaddress
import os
import struct
from pathlib import Path

import pytest
import trio

import tsproc
from tsproc.testing import local_tailnet

LINKTYPE_RAW = 101
MARKER = b"pcap-marker-5f3e9a"


def read_pcap(path: Path) -> tuple[int, list[bytes]]:
    """The link type and the packets of a classic little-endian pcap file."""
    data = path.read_bytes()
    magic, _major, _minor, _zone, _sig, _snap, linktype = struct.unpack_from("<IHHiIII", data)
    assert magic == 0xA1B2C3D4, hex(magic)
    packets, offset = [], 24
    while offset < len(data):
        _sec, _usec, incl, orig = struct.unpack_from("<IIII", data, offset)
        assert incl == orig
        packets.append(data[offset + 16: offset + 16 + incl])
        offset += 16 + incl
    assert offset == len(data), "the file ends inside a record"
    return linktype, packets


def tcp_segments(packets: list[bytes]) -> list[tuple[str, str, int, int, bytes]]:
    """(source, destination, source port, destination port, payload) of each TCP packet."""
    out = []
    for p in packets:
        if p[0] >> 4 == 4 and p[9] == 6:
            header = (p[0] & 0xF) * 4
            src, dst = str(ipaddress.IPv4Address(p[12:16])), str(ipaddress.IPv4Address(p[16:20]))
        elif p[0] >> 4 == 6 and p[6] == 6:
            header = 40
            src, dst = str(ipaddress.IPv6Address(p[8:24])), str(ipaddress.IPv6Address(p[24:40]))
        else:
            continue
        sport, dport = struct.unpack_from("!HH", p, header)
        offset = header + (p[header + 12] >> 4) * 4
        out.append((src, dst, sport, dport, p[offset:]))
    return out


@pytest.mark.offline
async def test_capture_pcap_holds_the_packets_of_a_known_connection(tmp_path):
    path = tmp_path / "node.pcap"
    async with local_tailnet() as tailnet, tailnet.node("server") as server, \
            tailnet.node("client") as client:
        listener = await server.listen(7123)
        async with client.capture_pcap(path), trio.open_nursery() as nursery:

            async def echo() -> None:
                async with await listener.accept() as stream:
                    await stream.send_all(await stream.receive_some(100))

            nursery.start_soon(echo)
            with trio.fail_after(20):
                async with await client.dial("server", 7123) as stream:
                    await stream.send_all(MARKER)
                    assert await stream.receive_some(100) == MARKER
        client_ip, server_ip = str(client.tailscale_ips[0]), str(server.tailscale_ips[0])
        # After the block the capture has stopped: the file no longer grows.
        size = path.stat().st_size
        await trio.sleep(0.3)
        assert path.stat().st_size == size
    assert os.stat(path).st_mode & 0o777 == 0o600
    linktype, packets = read_pcap(path)
    assert linktype == LINKTYPE_RAW
    segments = tcp_segments(packets)
    sent = [s for s in segments if s[:2] == (client_ip, server_ip) and s[3] == 7123]
    answered = [s for s in segments if s[:2] == (server_ip, client_ip) and s[2] == 7123]
    assert any(MARKER in s[4] for s in sent), segments
    assert any(MARKER in s[4] for s in answered), segments


async def test_capture_pcap_refuses_a_path_it_cannot_write(tmp_path):
    node = tsproc.Node("n")
    with pytest.raises(tsproc.InvalidArgumentError, match="cannot write"):
        async with node.capture_pcap(tmp_path / "missing" / "x.pcap"):
            pass
    with pytest.raises(tsproc.InvalidArgumentError, match="format"):
        async with node.capture_pcap(tmp_path / "x.pcap", format="json"):  # type: ignore[arg-type]
            pass
