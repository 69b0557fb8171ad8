"""An offline network for the tests that could otherwise reach beyond the machine.

Certificates on the local tailnet come by DNS-01, and before it publishes a record tsnet asks
the *system* resolver for it (best effort). So the HTTPS, Funnel and route tests run where no
packet can leave: in a network namespace of their own with only ``lo`` and a dead-end veth
pair (tsnet does not come up with loopback alone), no default route, and — in a mount
namespace of their own — a resolv.conf naming 127.0.0.1, so even that query stays on ``lo``.

:func:`enter` moves this process (the whole pytest run, and every helper it starts) into such
a namespace; it needs root and must run while the process has one thread (pytest_configure).
:func:`problems` says why the current network is not offline; :func:`dead_end_tx_packets`
counts what the veth sent — the proof a test shows: any packet to an address that is neither
loopback nor this namespace's own would have to leave through it.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

DEAD_END = "tsproc0"  # the veth end with the namespace's only non-loopback address
DEAD_END_PEER = "tsproc1"
DEAD_END_ADDR = "192.0.2.1/24"  # TEST-NET-1: routes nowhere
# tools/in-netns (where `make test` runs the suites as root) makes the same kind of namespace,
# with a default route into its dead end: that counts as offline too, so pytest stays in it.
IN_NETNS_DEAD_END = "tsproc-dead0"
IN_NETNS_DEAD_END_PEER = "tsproc-dead1"
IN_NETNS_ADDR = "192.0.2.2/24"
_DEAD_ENDS = (DEAD_END, IN_NETNS_DEAD_END)

_CLONE_NEWNS = 0x00020000
_CLONE_NEWNET = 0x40000000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_MS_BIND = 0x1000


def _routes() -> list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]]:
    """(interface, destination) of every route of this network namespace."""
    out: list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]] = []
    with open("/proc/net/route") as f:
        for line in f.readlines()[1:]:
            iface, dest, _gw, _flags, _r, _u, _m, mask = line.split()[:8]
            addr = ipaddress.IPv4Address(bytes.fromhex(dest)[::-1])
            netmask = ipaddress.IPv4Address(bytes.fromhex(mask)[::-1])
            out.append((iface, ipaddress.IPv4Network(f"{addr}/{netmask}", strict=False)))
    try:
        with open("/proc/net/ipv6_route") as f:
            for line in f:
                fields = line.split()
                dest, plen, iface = fields[0], int(fields[1], 16), fields[9]
                if iface == "lo":
                    continue  # local and loopback routes: they never leave
                net = ipaddress.IPv6Network((int(dest, 16), plen))
                if net.is_link_local or net.is_multicast:
                    continue
                out.append((iface, net))
    except FileNotFoundError:
        pass
    return out


def _interfaces() -> list[str]:
    with open("/proc/net/dev") as f:
        return [line.split(":", 1)[0].strip() for line in f.readlines()[2:]]


def _nameservers() -> list[str]:
    try:
        with open("/etc/resolv.conf") as f:
            return [line.split()[1] for line in f if line.startswith("nameserver")
                    and len(line.split()) > 1]
    except FileNotFoundError:
        return []


def problems() -> list[str]:
    """Why a packet could leave the machine from here: empty when offline."""
    found = []
    for iface in _interfaces():
        if iface not in ("lo", DEAD_END, DEAD_END_PEER, IN_NETNS_DEAD_END, IN_NETNS_DEAD_END_PEER):
            found.append(f"interface {iface} exists")
    dead_end_nets = {ipaddress.ip_interface(DEAD_END_ADDR).network,
                     ipaddress.ip_interface(IN_NETNS_ADDR).network}
    for iface, net in _routes():
        if iface == IN_NETNS_DEAD_END and (net.prefixlen == 0 or net in dead_end_nets):
            continue  # in-netns's dead end, default route included: nothing answers there
        if net.prefixlen == 0:
            found.append(f"a default route via {iface}")
        elif iface != "lo" and net not in dead_end_nets:
            found.append(f"a route to {net} via {iface}")
    for ns in _nameservers():
        if not ipaddress.ip_address(ns).is_loopback:
            found.append(f"resolv.conf names {ns}")
    return found


def dead_end_tx_packets() -> int:
    """Packets the dead-end veth has sent (from /proc/net/dev, which is per namespace)."""
    with open("/proc/net/dev") as f:
        for line in f.readlines()[2:]:
            name, data = line.split(":", 1)
            if name.strip() in _DEAD_ENDS:
                return int(data.split()[9])
    raise RuntimeError(f"no interface {DEAD_END}: not in the test network namespace")


def can_enter() -> bool:
    return sys.platform == "linux" and os.geteuid() == 0 and threading.active_count() == 1


def enter() -> None:
    """Move this process into a new network and mount namespace set up as described above."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNET | _CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")
    # Mounts made here must not propagate back to the host's namespace.
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"making / private: {os.strerror(err)}")
    resolv = Path(tempfile.mkdtemp(prefix="tsproc-netns-")) / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    if libc.mount(str(resolv).encode(), b"/etc/resolv.conf", None, _MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind-mounting resolv.conf: {os.strerror(err)}")
    for cmd in (
        ["ip", "link", "set", "lo", "up"],
        ["ip", "link", "add", DEAD_END, "type", "veth", "peer", "name", DEAD_END_PEER],
        # No IPv6 on the veth: the kernel would send router and neighbour solicitations.
        ["sysctl", "-q", "-w", f"net.ipv6.conf.{DEAD_END}.disable_ipv6=1",
         f"net.ipv6.conf.{DEAD_END_PEER}.disable_ipv6=1"],
        ["ip", "addr", "add", DEAD_END_ADDR, "dev", DEAD_END],
        ["ip", "link", "set", DEAD_END, "up"],
        ["ip", "link", "set", DEAD_END_PEER, "up"],
    ):
        subprocess.run(cmd, check=True, capture_output=True)
    os.environ["TSPROC_TEST_NETNS"] = "1"
