"""The only way into a node is the tailnet: its helper holds no listening socket on any host
address, TCP or Unix, and its only UDP sockets bound beyond loopback are WireGuard's own
(magicsock's, one per address family, on a random port).

/proc/<pid>/net/* lists every socket of the network namespace; the helper's are those whose
inode appears as `socket:[inode]` among /proc/<pid>/fd.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys

import pytest
import trio

import tsproc

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")

TCP_LISTEN = "0A"


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:["):-1]))
    return inodes


def _addr(hex_addr: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """'0100007F:1F90' → (127.0.0.1, 8080); the address is in host byte order per 32 bits."""
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw), int(port, 16)


def inet_sockets(pid: int, inodes: set[int]) -> list[dict[str, object]]:
    """The helper's TCP and UDP sockets: protocol, local address, remote address, state."""
    out = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                lines = f.readlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[9]) in inodes:
                out.append({
                    "proto": table,
                    "local": _addr(fields[1]),
                    "remote": _addr(fields[2]),
                    "state": fields[3],
                })
    return out


def unix_listeners(pid: int, inodes: set[int]) -> list[str]:
    """The helper's listening AF_UNIX sockets (flag __SO_ACCEPTCON), by path ('' if none)."""
    out = []
    with open(f"/proc/{pid}/net/unix") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[6]) in inodes and int(fields[3], 16) & 0x10000:
                out.append(fields[7] if len(fields) > 7 else "")
    return out


def describe(sockets: list[dict[str, object]]) -> str:
    return "\n".join(f"  {s['proto']} {s['local']} -> {s['remote']} state {s['state']}"
                     for s in sockets)


async def echo_once(listener: tsproc.TailnetListener) -> None:
    async with await listener.accept() as stream:
        await stream.send_all(await stream.receive_some(100))


async def test_the_helper_has_no_host_listener_and_udp_only_for_wireguard(tailnet_node):
    async with tailnet_node("exposed") as node, tailnet_node("peer") as peer:
        # A node in full use: listening on the tailnet, with a connection in each direction.
        listener = await node.listen(80)
        back = await peer.listen(81)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo_once, listener)
            nursery.start_soon(echo_once, back)
            inbound = await peer.dial("exposed", 80)
            outbound = await node.dial("peer", 81)
            for stream in (inbound, outbound):
                await stream.send_all(b"x")
                assert await stream.receive_some(10) == b"x"

            pid = node.helper_pid
            assert pid is not None
            inodes = socket_inodes(pid)
            sockets = inet_sockets(pid, inodes)
            for stream in (inbound, outbound):
                await stream.aclose()

        listening = [s for s in sockets
                     if s["proto"].startswith("tcp") and s["state"] == TCP_LISTEN]
        assert not listening, f"the helper listens on the host:\n{describe(listening)}"
        assert not unix_listeners(pid, inodes), "the helper has a listening AF_UNIX socket"

        # UDP: WireGuard (magicsock) binds one socket per family on the wildcard address.
        # Anything else bound beyond loopback would be a way in.
        udp_open = [s for s in sockets if s["proto"].startswith("udp")
                    and not s["local"][0].is_loopback]
        for s in udp_open:
            assert s["local"][0].is_unspecified, f"UDP bound to a specific address: {s}"
        assert len(udp_open) <= 2, f"more UDP sockets than magicsock's:\n{describe(udp_open)}"
        assert len({s["local"][1] for s in udp_open}) <= 2

        # TCP connections are outbound only: to the control server and the DERP relay, here
        # both on loopback.
        for s in sockets:
            if s["proto"].startswith("tcp"):
                assert s["remote"][0].is_loopback, f"unexpected TCP connection: {s}"


async def test_nothing_on_the_host_answers_at_the_helpers_ports(tailnet_node):
    """Belt and braces: connect to every port the helper has a socket on, on loopback."""
    async with tailnet_node("quiet") as node:
        pid = node.helper_pid
        assert pid is not None
        ports = {s["local"][1] for s in inet_sockets(pid, socket_inodes(pid))
                 if s["proto"] in ("tcp", "tcp6")}
        for port in ports:
            with socket.socket() as probe:
                probe.settimeout(2)
                assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} accepts"


async def test_the_peerAPI_is_served_over_the_tailnet_only(tailnet_node):
    """tsnet's peerAPI used to open an (unused) kernel TCP listener on 0.0.0.0; the helper
    forbids listen(2) (helper/internal/nolisten), and tsnet then serves the peerAPI from
    netstack alone, on the port it advertises, 1. Peers still reach it."""
    async with tailnet_node("api"), tailnet_node("peer") as peer:
        with trio.fail_after(10):
            stream = await peer.dial("api", 1)
        async with stream:
            await stream.send_all(b"GET /v0/env HTTP/1.0\r\nHost: api\r\n\r\n")
            answer = b""
            with trio.fail_after(10):
                while chunk := await stream.receive_some(4096):
                    answer += chunk
        # Refused, as for any peer that does not own the node: but refused by the peerAPI.
        assert answer.startswith(b"HTTP/1.0 403"), answer[:200]
        assert b"peerapi" in answer
