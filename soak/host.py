"""The host process's own resources, counted before and after the soak to find leaks."""

from __future__ import annotations

import os

import trio


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def child_pids() -> set[int]:
    me, children = os.getpid(), set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me:
                children.add(int(name))
    return children


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def trio_tasks() -> int:
    stack, n = [trio.lowlevel.current_root_task()], 0
    while stack:
        task = stack.pop()
        n += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return n


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def fd_target(fd: int) -> str:
    try:
        return f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}"
    except OSError:
        return str(fd)
