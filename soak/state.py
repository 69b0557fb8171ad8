"""What the soak's parts share: its configuration, its tsproc nodes, the faults it injected and
the running soak itself."""

from __future__ import annotations

import itertools
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

import tsproc
import tsproc.testing

from . import faults
from .protocol import Ledger, Pool
from .timeline import GO_NAME, Timeline
from .workload import SERVICE_PORT, UDP_PORT, Client, Counters, serve_conn

# Faster than the default policy, so that a frozen helper is found within a few seconds, yet
# slack enough for a shared, loaded machine; stable_after is short so that a crash loop is
# counted from a helper that ran a while, as in production.
POLICY = tsproc.RestartPolicy(
    max_attempts=6, initial_backoff=0.1, heartbeat_interval=1.0, heartbeat_timeout=4.0,
    stable_after=10.0,
)


@dataclass
class Config:
    minutes: float = 5.0
    seed: int = 0
    nodes: int = 3
    fault_gap: tuple[float, float] = (2.0, 6.0)
    json_path: Path | None = None
    verbose: bool = False
    kinds: tuple[str, ...] = faults.KINDS


def log(msg: str) -> None:
    print(f"soak: {msg}", file=sys.stderr, flush=True)


class SoakNode:
    """One tsproc node of the soak, its service listener and what happened to it."""

    def __init__(self, name: str, node: tsproc.Node, crash_file: Path) -> None:
        self.name = name
        self.node = node
        self.crash_file = crash_file
        self.ips: tuple[Any, ...] = ()
        self.listener: tsproc.TailnetListener | None = None
        self.listener_ready = trio.Event()
        self.accept_closed = trio.Event()
        self._closing_listener = False
        self.restarts: list[tuple[float, str]] = []
        self.last_restart = trio.current_time()
        self.crash_loop_failure = ""
        self.handlers = 0

    async def open_service_listener(self) -> None:
        self.listener = await faults._listen(self.node, SERVICE_PORT, backlog=128)
        self.listener_ready.set()

    async def close_service_listener(self) -> None:
        self.listener_ready = trio.Event()
        self.accept_closed = trio.Event()
        self._closing_listener = True
        assert self.listener is not None
        await self.listener.aclose()

    async def reopen_service_listener(self) -> None:
        await self.open_service_listener()
        self._closing_listener = False

    async def serve(self, soak: Soak) -> None:
        async with trio.open_nursery() as handlers:
            while True:
                await self.listener_ready.wait()
                assert self.listener is not None
                try:
                    stream = await self.listener.accept()
                except trio.ClosedResourceError as exc:
                    self.accept_closed.set()
                    if not self._closing_listener:
                        # Not our doing: tsproc closed it. Note it, and listen again.
                        soak.counters.notes.append(f"{self.name}: service listener closed: {exc}")
                        self.listener_ready = trio.Event()
                        await self.open_service_listener()
                    continue
                handlers.start_soon(self._handle, stream, soak)

    async def _handle(self, stream: tsproc.TailnetStream, soak: Soak) -> None:
        self.handlers += 1
        try:
            await serve_conn(stream, soak.ledger, soak.pool)
        finally:
            self.handlers -= 1

    async def udp_echo(self) -> None:
        while True:
            try:
                conn = await self.node.listen_packet(UDP_PORT)
            except tsproc.TsprocError:
                await trio.sleep(0.5)  # restarting (or the old socket not yet released)
                continue
            async with conn:
                try:
                    while True:
                        data, addr = await conn.recvfrom()
                        await conn.sendto(data, addr)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    continue  # its helper restarted: open a new one

    async def watch_events(self, events: tsproc.EventStream, timeline: Timeline) -> None:
        async for event in events:
            if isinstance(event, tsproc.StateEvent):
                timeline.state(self.name, event.state)  # RESTARTING: its helper died
            elif isinstance(event, tsproc.HelperRestartedEvent):
                now = trio.current_time()
                self.restarts.append((now, event.reason))
                self.last_restart = now
            elif isinstance(event, tsproc.CrashLoopEvent):
                self.crash_loop_failure = event.error


@dataclass
class FaultRecord:
    kind: str
    node: str
    at: float
    recovery: float | None
    note: str
    failed: str = ""


@dataclass
class Soak:
    cfg: Config
    tailnet: tsproc.testing.LocalTailnet
    ledger: Ledger
    pool: Pool
    counters: Counters
    client: Client
    nodes: list[SoakNode]
    control_pid: int
    fault_rng: random.Random
    timeline: Timeline
    policy: tsproc.RestartPolicy = POLICY
    faults: list[FaultRecord] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def next_id(self) -> int:
        return next(self._ids)

    def peer_names(self, sn: SoakNode) -> list[str]:
        return [n.name for n in self.nodes if n is not sn] + [GO_NAME]

    def by_name(self, name: str) -> SoakNode | None:
        return next((n for n in self.nodes if n.name == name), None)
