"""The soak's pure-Go tsnet peer (soak/gopeer) as a test's other end: a tsnet node that is not
tsproc, driven by its stdin test commands (soak/gopeer/probe.go)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import trio

GOPEER = Path(__file__).resolve().parents[1] / "soak" / "gopeer" / "gopeer"


class GoPeer:
    """A running gopeer: ``command()`` writes a stdin line, ``event()`` reads its next JSON
    line of a given kind."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._buffer = b""
        self.ips: list[str] = []

    async def command(self, line: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(line.encode() + b"\n")

    async def event(self, kind: str) -> dict[str, Any]:
        """The next event of *kind*; an ``error`` event fails the test."""
        assert self.process.stdout is not None
        while True:
            while b"\n" not in self._buffer:
                data = await self.process.stdout.receive_some()
                if not data:
                    pytest.fail(f"gopeer exited before its {kind!r} event")
                self._buffer += data
            line, self._buffer = self._buffer.split(b"\n", 1)
            ev = json.loads(line)
            if ev["ev"] == "error":
                pytest.fail(f"gopeer: {ev['error']}")
            if ev["ev"] == kind:
                return ev


@asynccontextmanager
async def gopeer(control_url: str, hostname: str = "gopeer") -> AsyncIterator[GoPeer]:
    """A gopeer on the tailnet at *control_url*, up (its ``ready`` event read), stopped at
    exit."""
    if not GOPEER.exists():
        pytest.skip(f"{GOPEER} is not built (make soak/gopeer/gopeer; make test builds it)")
    env = {**os.environ, "TS_DISABLE_PORTMAPPER": "1", "TS_DEBUG_OMIT_LOCAL_ADDRS": "1"}
    process = await trio.lowlevel.open_process(
        [str(GOPEER), "-control", control_url, "-hostname", hostname],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
        start_new_session=True)
    peer = GoPeer(process)
    try:
        with trio.fail_after(120):
            peer.ips = (await peer.event("ready"))["ips"]
        yield peer
    finally:
        with trio.CancelScope(shield=True):
            with suppress(trio.BrokenResourceError):
                await peer.command("stop")
            with trio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    await pipe.aclose()
