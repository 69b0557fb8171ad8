"""Starting a node for the ``tsproc`` command line: a live progress line on stderr that shows
the node's state and tsnet's health text as they come, and an interactive login URL printed
prominently (kept apart from ``main.py``, which parses arguments and runs the commands)."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final, TextIO

import trio

from .._core.node import Node
from .._core.types import AuthUrlEvent, NodeState, StateEvent
from ..errors import NodeTimeoutError

AUTH_KEY_ENV: Final = "TS_AUTHKEY"


class _Progress:
    """One live status line on a terminal (rewritten in place), or plain lines elsewhere."""

    def __init__(self, out: TextIO, hostname: str) -> None:
        self._out = out
        self.live = out.isatty()
        self._hostname = hostname
        self._started = time.monotonic()
        self._last = ""
        self._drawn = False

    def show(self, state: str) -> None:
        if self.live:
            elapsed = time.monotonic() - self._started
            self._out.write(f"\r\033[Ktsproc: {self._hostname}: {state} … {elapsed:.0f}s")
            self._drawn = True
            self._out.flush()
        elif state != self._last:
            self._out.write(f"tsproc: {self._hostname}: {state}\n")
            self._out.flush()
        self._last = state

    def tick(self) -> None:
        if self.live and self._last:
            self.show(self._last)

    def message(self, text: str) -> None:
        self._clear()
        self._out.write(text)
        self._out.flush()

    def _clear(self) -> None:
        if self._drawn:
            self._out.write("\r\033[K")
            self._drawn = False


def _describe(node: Node, backend_state: str, health: tuple[str, ...] = ()) -> str:
    text = str(node.state.value)
    if node.state is NodeState.STARTING and backend_state:
        text = f"starting (tailnet: {backend_state})"
    if health and node.state is not NodeState.RUNNING:
        # Why it is not running yet, as tsnet says it: the one thing worth reading.
        text += f"; health: {'; '.join(health)}"
    return text


async def _watch_start(node: Node, progress: _Progress) -> None:
    shown_urls: set[str] = set()

    def show_url(url: str) -> None:
        if url and url not in shown_urls:
            shown_urls.add(url)
            shown = f"\033[1m{url}\033[0m" if progress.live else url
            progress.message(f"\nTo log this node in to the tailnet, open:\n\n    {shown}\n\n")

    async with node.events() as events, trio.open_nursery() as nursery:

        async def tick() -> None:
            while True:
                await trio.sleep(1)
                progress.tick()

        nursery.start_soon(tick)
        progress.show(_describe(node, ""))
        show_url(node.auth_url)  # it may have come before we subscribed
        async for event in events:
            if isinstance(event, AuthUrlEvent):
                show_url(event.url)
            elif isinstance(event, StateEvent):
                progress.show(_describe(node, event.backend_state, event.health))


@asynccontextmanager
async def running_node(args: argparse.Namespace) -> AsyncIterator[Node]:
    """The node the command line describes, once it is running."""
    auth_key = os.environ.get(AUTH_KEY_ENV) or None
    node = Node(
        args.hostname,
        auth_key=auth_key,
        control_url=args.control_url,
        state_dir=args.state_dir,
        ephemeral=args.ephemeral,
        up_timeout=None,  # wait as long as --timeout says, e.g. for a person to log in
        wait_running=False,
    )
    progress = _Progress(sys.stderr, args.hostname)
    async with node:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_start, node, progress)
                limit = math.inf if args.timeout is None else args.timeout
                with trio.move_on_after(limit) as scope:
                    await node.wait_running()
                if scope.cancelled_caught:
                    health = "; ".join(node.health) or "no warnings"
                    raise NodeTimeoutError(
                        f"node {node.hostname!r} is not running after {args.timeout:g} s "
                        f"({_describe(node, node.backend_state)}); health: {health}")
                nursery.cancel_scope.cancel()
        finally:
            progress.message("")  # end the live line, whatever happened
        ips = ", ".join(str(ip) for ip in node.tailscale_ips)
        progress.message(f"tsproc: {node.hostname} is on the tailnet as {ips}\n")
        yield node
