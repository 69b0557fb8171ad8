"""The soak's steady workload: tasks that move data between the nodes until told to stop."""

from __future__ import annotations

import itertools
import random

import trio

import tsproc

from .state import Soak, SoakNode
from .workload import serve_conn


def _pick(soak: Soak, rng: random.Random) -> tuple[SoakNode, str]:
    src = rng.choice(soak.nodes)
    return src, rng.choice(soak.peer_names(src))


async def _bulk_worker(soak: Soak, stop: trio.Event, rng: random.Random, _: int) -> None:
    while not stop.is_set():
        src, dst = _pick(soak, rng)
        outcome = await soak.client.bulk(src.node, dst, int(2 ** rng.uniform(10, 21)),
                                         int(2 ** rng.uniform(10, 21)), rng=rng)
        if outcome != "complete":
            await trio.sleep(0.2)


async def _short_worker(soak: Soak, stop: trio.Event, rng: random.Random, _: int) -> None:
    while not stop.is_set():
        src, dst = _pick(soak, rng)
        outcome = await soak.client.bulk(src.node, dst, rng.randrange(16, 512),
                                         rng.randrange(16, 512), rng=rng)
        await trio.sleep(0.02 if outcome == "complete" else 0.2)


async def _rr_worker(soak: Soak, stop: trio.Event, rng: random.Random, _: int) -> None:
    while not stop.is_set():
        src, dst = _pick(soak, rng)
        outcome = await soak.client.request_response(src.node, dst, rng.randrange(10, 200), rng)
        if outcome != "complete":
            await trio.sleep(0.2)


async def _udp_worker(soak: Soak, stop: trio.Event, rng: random.Random, _: int) -> None:
    while not stop.is_set():
        src, dst = _pick(soak, rng)
        await soak.client.udp_flow(src.node, dst, rng.randrange(50, 200), rng)
        await trio.sleep(0.1)


async def _listener_worker(soak: Soak, stop: trio.Event, rng: random.Random, _: int) -> None:
    """New listeners opened, used and closed; a closed one must refuse."""
    c = soak.counters
    for round_ in itertools.count():
        if stop.is_set():
            return
        sn = rng.choice(soak.nodes)
        src = rng.choice([n for n in soak.nodes if n is not sn])
        port = 7400 + round_ % 50
        try:
            listener = await _listen_freed_port(soak, sn, port)
        except (trio.TooSlowError, tsproc.TsprocError):
            await trio.sleep(0.5)
            continue
        c.listeners_opened += 1
        async with trio.open_nursery() as nursery:
            async def serve(listener: tsproc.TailnetListener = listener) -> None:
                while True:
                    try:
                        stream = await listener.accept()
                    except trio.ClosedResourceError:
                        return
                    nursery.start_soon(serve_conn, stream, soak.ledger, soak.pool)

            nursery.start_soon(serve)
            for _ in range(rng.randrange(1, 4)):
                await soak.client.bulk(src.node, sn.name, rng.randrange(64, 65536),
                                       rng.randrange(64, 65536), port=port, rng=rng)
            await listener.aclose()
            c.listeners_closed += 1
        # Closed: a dial to it must fail (it is refused), not connect. Only meaningful while
        # both nodes stayed up: a restart in between would explain a refusal by itself anyway.
        restarts = len(sn.restarts) + len(src.restarts)
        try:
            with trio.fail_after(30):
                stream = await soak.timeline.dial(src.node, sn.name, port)
        except (trio.TooSlowError, tsproc.TsprocError):
            pass
        else:
            await stream.aclose()
            if len(sn.restarts) + len(src.restarts) == restarts:
                c.closed_listener_accepted += 1
                soak.failures.append(f"{src.name} connected to {sn.name}:{port} after its "
                                     "listener was closed")
        await trio.sleep(rng.uniform(0.1, 1.0))


async def _listen_freed_port(soak: Soak, sn: SoakNode, port: int) -> tsproc.TailnetListener:
    """Listen on a port whose last listener was closed: AddressInUseError for long means the
    helper kept the closed listener (a leak, and a port lost until the next restart)."""
    in_use_since = None
    with trio.fail_after(60):
        while True:
            try:
                return await sn.node.listen(port, backlog=16)
            except tsproc.AddressInUseError:
                now = trio.current_time()
                in_use_since = in_use_since or now
                if now - in_use_since > 10:
                    soak.failures.append(f"{sn.name}:{port} still taken 10 s after its "
                                         "listener was closed")
                    raise
            except (tsproc.HelperDiedError, tsproc.NodeTimeoutError):
                in_use_since = None  # restarting: the port is free once it is back
            await trio.sleep(0.2)


WORKERS = (
    [_bulk_worker] * 3 + [_short_worker] * 2 + [_rr_worker] * 2 + [_udp_worker]
    + [_listener_worker]
)
