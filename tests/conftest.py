"""Shared test set-up: the helper binary must exist (``make test`` builds it), and resource
counters for the "nothing leaks" checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tsproc._helper import find_helper
from tsproc.errors import HelperNotFoundError

# tsproc's own fixtures (tailnet, tailnet_node) come from its installed pytest11 plugin, exactly
# as a user gets them.


@pytest.fixture(scope="session", autouse=True)
def _helper_built() -> Path:
    try:
        return find_helper()
    except HelperNotFoundError as exc:
        pytest.exit(f"{exc}\n(run the tests with `make test`, which builds it)", returncode=2)


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
