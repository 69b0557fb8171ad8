"""Shared test set-up: the helper binary must exist (``make test`` builds it), the offline
network namespace of the ``offline`` tests (tests/netns.py), and resource counters for the
"nothing leaks" checks."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import netns
import pytest

from tsproc._child.helper import find_helper
from tsproc.errors import HelperNotFoundError

# tsproc's own fixtures (tailnet, tailnet_node) come from its installed pytest11 plugin, exactly
# as a user gets them.


def pytest_report_header() -> str:
    """Where the suite runs: in tools/in-netns's namespace (``make test`` as root), or not."""
    if os.environ.get("TSPROC_NETNS") == "dead-end":
        names = ", ".join(sorted(name for _, name in socket.if_nameindex()))
        return f"network namespace: its own, tools/in-netns ({names})"
    return "network namespace: the host's"


@pytest.fixture(scope="session", autouse=True)
def _helper_built() -> Path:
    try:
        return find_helper()
    except HelperNotFoundError as exc:
        pytest.exit(f"{exc}\n(run the tests with `make test`, which builds it)", returncode=2)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Before any test runs (the process has one thread still): if an ``offline`` test will
    run and the network is not offline, move the whole run into a namespace that is."""
    if not any(item.get_closest_marker("offline") for item in items):
        return
    if netns.problems() and netns.can_enter() and os.environ.get("TSPROC_TEST_NETNS") != "0":
        netns.enter()


@pytest.fixture(autouse=True)
def _offline(request: pytest.FixtureRequest) -> Iterator[None]:
    """For an ``offline`` test: the network is offline, and the test sent nothing that could
    have left — no packet through the namespace's only non-loopback interface."""
    if request.node.get_closest_marker("offline") is None:
        yield
        return
    found = netns.problems()
    if found:
        reason = "; ".join(found)
        if os.geteuid() != 0:
            pytest.skip(f"needs an offline network namespace, which only root can make: {reason}")
        pytest.fail(f"the network is not offline: {reason}")
    before = netns.dead_end_tx_packets()
    yield
    sent = netns.dead_end_tx_packets() - before
    assert sent == 0, f"{sent} packets left through {netns.DEAD_END} towards a non-loopback address"
    assert netns.problems() == []


def open_fds() -> set[int]:
    """This process's open file descriptors."""
    return {int(name) for name in os.listdir("/proc/self/fd")}


def fd_targets(fds: set[int]) -> dict[int, str]:
    out = {}
    for fd in fds:
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
    return out


def child_pids() -> set[int]:
    """Processes whose parent is this one (running or zombie)."""
    me = os.getpid()
    children = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == me:
            children.add(int(name))
    return children


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
