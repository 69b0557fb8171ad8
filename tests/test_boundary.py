"""The tailnet boundary: ``dial``, ``dial_udp`` and ``ping`` reach only addresses that a node in
the netmap holds; a Tailscale IP that nobody holds is a DialError at once, and nothing is sent.

The test must not be able to leak itself, so it runs only in a network namespace of its own
(tools/in-netns: ``lo`` and a dead-end veth pair; ``make test`` runs the whole suite in one as
root). There the would-be destinations are put on ``lo`` with listeners behind them, a trap:
had a dial gone through the host network, as tsnet's own Dial does for an address its netmap
does not route, it would have connected there.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import tsproc

ROOT = Path(__file__).resolve().parent.parent
IN_NETNS = ROOT / "tools" / "in-netns"

# In Tailscale's ranges, held by no node: the local tailnet hands out 100.64.x.y and their
# fd7a:115c:a1e0::6440:xxyy twins.
UNHELD = ["100.99.0.99", "fd7a:115c:a1e0::99:99"]
PORT = 8080


def in_own_netns() -> bool:
    return os.environ.get("TSPROC_NETNS") == "dead-end"


def can_make_netns() -> bool:
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return False
    out = subprocess.run([IN_NETNS, "--check"], capture_output=True, text=True, check=False)
    return bool(out.stdout.strip())


@pytest.fixture
def trap() -> Iterator[list[socket.socket]]:
    """The unheld addresses on lo, each with a TCP listener and a UDP socket on PORT."""
    socks: list[socket.socket] = []
    added: list[str] = []
    try:
        for addr in UNHELD:
            ip = ipaddress.ip_address(addr)
            cidr = f"{addr}/{ip.max_prefixlen}"
            # nodad: an IPv6 address usable at once, not "tentative" for a second
            nodad = ["nodad"] if ip.version == 6 else []
            subprocess.run(["ip", "address", "replace", cidr, "dev", "lo", *nodad], check=True)
            added.append(cidr)
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            tcp = socket.socket(family, socket.SOCK_STREAM)
            tcp.bind((addr, PORT))
            tcp.listen()
            tcp.setblocking(False)
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.bind((addr, PORT))
            udp.setblocking(False)
            socks += [tcp, udp]
        yield socks
    finally:
        for s in socks:
            s.close()
        for cidr in added:
            subprocess.run(["ip", "address", "del", cidr, "dev", "lo"], check=False)


def arrivals(socks: list[socket.socket]) -> list[str]:
    """What reached the trap: pending connections and datagrams."""
    got = []
    for s in socks:
        try:
            if s.type == socket.SOCK_STREAM:
                conn, peer = s.accept()
                conn.close()
                got.append(f"a connection from {peer} to {s.getsockname()}")
            else:
                data, peer = s.recvfrom(2048)
                got.append(f"a datagram {data!r} from {peer} to {s.getsockname()}")
        except BlockingIOError:
            continue
    return got


@pytest.mark.skipif(in_own_netns() or not can_make_netns(),
                    reason="already in its own network namespace, or none can be made here")
def test_the_boundary_tests_run_in_a_network_namespace_of_their_own():
    """Where one can be made (root, unshare), run this file's tests in one."""
    result = subprocess.run(
        [IN_NETNS, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
         "-k", "only_lo_and_a_dead_end or no_node_holds"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0 and "2 passed" in result.stdout, (
        result.stdout + result.stderr)


@pytest.mark.skipif(not os.environ.get("CI") or not can_make_netns(),
                    reason="CI only, where a namespace can be made")
def test_ci_runs_the_suite_in_a_network_namespace_of_its_own():
    """`make test` (what CI runs) enters tools/in-netns before any test."""
    assert in_own_netns(), "make test ran the suite in the host's network namespace"


@pytest.mark.skipif(not in_own_netns(), reason="not in tools/in-netns's namespace")
def test_the_namespace_has_only_lo_and_a_dead_end():
    # (Not /sys/class/net: sysfs shows the namespace it was mounted in, the host's.)
    names = sorted(name for _, name in socket.if_nameindex())
    assert names == ["lo", "tsproc-dead0", "tsproc-dead1"]
    routes = subprocess.run(["ip", "route", "show", "default"], capture_output=True, text=True,
                            check=True).stdout
    assert routes.startswith("default via 192.0.2.1 dev tsproc-dead0"), routes


needs_own_netns = pytest.mark.skipif(
    not in_own_netns(),
    reason="only in a network namespace of its own (tools/in-netns; `make test` as root)",
)


@needs_own_netns
async def test_an_address_no_node_holds_is_a_DialError_at_once_and_nothing_is_sent(
        tailnet_node, trap):
    async with tailnet_node("client") as client, tailnet_node("server") as server:
        async with await server.listen(PORT) as listener:
            # The server's own addresses, both families, are dialled as before.
            for ip in server.tailscale_ips:
                with trio.fail_after(30):
                    stream = await client.dial(str(ip), PORT)
                    await stream.aclose()
                    await (await listener.accept()).aclose()
        for addr in UNHELD:
            for attempt, args in (
                (client.dial, (addr, PORT)),
                (client.dial_udp, (addr, PORT)),
                (client.ping, (addr,)),
            ):
                # "At once": the error comes from the netmap, not from a timeout.
                with trio.fail_after(20), pytest.raises(tsproc.DialError) as info:
                    await attempt(*args)
                assert "not an address on the tailnet" in str(info.value)
                assert addr in str(info.value)
    assert arrivals(trap) == []
