"""The soak's pure-Go tsnet peer (soak/gopeer), seen from the host: its stdout lines."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import trio

from .protocol import Ledger, Side
from .timeline import Timeline


class GoPeer:
    def __init__(self, process: trio.Process, soak_ledger: Ledger, timeline: Timeline) -> None:
        self.process = process
        self.ledger = soak_ledger
        self.timeline = timeline
        self.ready = trio.Event()
        self.done = trio.Event()
        self.ips: list[str] = []
        self.dialed = 0
        self.error = ""

    async def read(self) -> None:
        assert self.process.stdout is not None
        buf = b""
        async for chunk in self.process.stdout:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                self._line(json.loads(line))
        if not self.done.is_set():
            self.error = self.error or f"the Go peer exited early ({self.process.returncode})"
        self.ready.set()
        self.done.set()

    def _line(self, msg: dict[str, Any]) -> None:
        ev = msg.get("ev")
        if ev == "ready":
            self.ips = list(msg["ips"])
            self.ready.set()
        elif ev == "rec":
            self.ledger.record(int(msg["id"]), msg["role"], msg["kind"],
                               Side(msg["outcome"], bool(msg["sent_all"]),
                                    int(msg["verified"]), str(msg["detail"])))
            self.timeline.go_record(int(msg["id"]), msg["role"], msg["outcome"],
                                    str(msg["detail"]), msg)
        elif ev == "dial":
            self.timeline.go_dial(msg)
        elif ev == "done":
            self.dialed = int(msg.get("dialed", 0))
            self.done.set()
        elif ev == "error":
            self.error = str(msg.get("error"))

    async def send(self, line: str) -> None:
        assert self.process.stdin is not None
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.process.stdin.send_all(line.encode() + b"\n")
