"""Both ends of the soak's transfers over tsproc (soak/protocol.py describes the frames), and
the counters the table is made of."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

import tsproc

from .protocol import (
    BYE,
    EXPECTED_ERRORS,
    HEADER,
    MAGIC,
    U32,
    Corrupt,
    EarlyEOF,
    Ledger,
    Pool,
    Session,
    Side,
    classify,
    deadline_for,
    udp_datagram,
    udp_parse,
)
from .timeline import Timeline

SERVICE_PORT = 7000
UDP_PORT = 7001
RR_MAX = 16 << 10


@dataclass
class Counters:
    """What the workload did, for the table."""

    connections: int = 0  # tailnet TCP connections opened (successful dials)
    udp_flows: int = 0
    udp_flow_errors: int = 0
    udp_sent: int = 0
    udp_echoed: int = 0
    udp_duplicates: int = 0
    udp_stray: int = 0
    udp_corrupt: int = 0
    udp_bytes: int = 0
    # Sent / echoed per destination kind ("Go peer", "tsproc"), to see where loss happens.
    udp_by_target: dict[str, list[int]] = field(default_factory=dict)
    listeners_opened: int = 0
    listeners_closed: int = 0
    closed_listener_accepted: int = 0
    accept_not_woken: int = 0
    notes: list[str] = field(default_factory=list)


def _size(rng: random.Random, low_log2: int, high_log2: int) -> int:
    """A log-uniform size from 2**low to 2**high."""
    return int(2 ** rng.uniform(low_log2, high_log2))


async def serve_conn(stream: tsproc.TailnetStream, ledger: Ledger, pool: Pool) -> None:
    """Serve one accepted connection to its end, and record how it ended."""
    s = Session(stream)
    async with stream:
        try:
            with trio.fail_after(deadline_for(0)):
                header = await s.read_exactly(HEADER.size)
        except (EarlyEOF, trio.TooSlowError, *EXPECTED_ERRORS):
            return  # a probe, a cancelled dial, a saturation connection: not a transfer
        magic, kind_byte, transfer, a, b = HEADER.unpack(header)
        kind = kind_byte.decode("latin-1")
        if magic != MAGIC or kind == "P":
            return
        rng = random.Random(transfer)
        try:
            with trio.fail_after(deadline_for(a + b if kind == "B" else a * RR_MAX)):
                if kind == "B":
                    await _serve_bulk(s, pool, rng, a, b)
                elif kind == "R":
                    await _serve_rr(s)
                else:
                    raise Corrupt(f"unknown kind {kind!r}")
        except Exception as exc:  # every ending is recorded, then judged by the ledger
            outcome, detail = classify(exc)
            ledger.record(transfer, "server", kind, Side(outcome, s.sent_all, s.verified, detail))
        else:
            ledger.record(transfer, "server", kind, Side("complete", s.sent_all, s.verified))


async def _serve_bulk(s: Session, pool: Pool, rng: random.Random, up: int, down: int) -> None:
    try:
        await s.receive_data(up)
    except Corrupt:
        await s.stream.send_all(b"\x00")
        raise
    await s.stream.send_all(b"\x01")
    await s.send_data(pool, rng, down)
    s.sent_all = True
    await s.stream.send_eof()
    await s.read_to_eof()


async def _serve_rr(s: Session) -> None:
    while True:
        (n,) = U32.unpack(await s.read_exactly(U32.size))
        if n == BYE:
            await s.stream.send_all(U32.pack(BYE))
            s.sent_all = True
            await s.stream.send_eof()
            await s.read_to_eof()
            return
        if n > RR_MAX:
            raise Corrupt(f"request of {n} bytes")
        payload = await s.read_exactly(n)
        await s.stream.send_all(U32.pack(n) + hashlib.sha256(payload).digest() + payload)
        s.verified += n


class Client:
    """Starts transfers from a tsproc node and records the client side of each."""

    def __init__(self, ledger: Ledger, pool: Pool, counters: Counters,
                 next_id: Callable[[], int], timeline: Timeline) -> None:
        self.ledger = ledger
        self.pool = pool
        self.counters = counters
        self.next_id = next_id
        self.timeline = timeline

    async def bulk(self, node: tsproc.Node, target: str, up: int, down: int,
                   port: int = SERVICE_PORT, rng: random.Random | None = None,
                   deadline: float | None = None) -> str:
        """One bulk transfer (or a short connection, with small sizes); its outcome. It
        counts as stuck at *deadline* (trio time), by default deadline_for its size."""
        transfer = self.next_id()
        rng = rng or random.Random(transfer)

        async def body(s: Session) -> None:
            await s.stream.send_all(HEADER.pack(MAGIC, b"B", transfer, up, down))
            await s.send_data(self.pool, rng, up)
            s.sent_all = True
            status = await s.read_exactly(1)
            if status != b"\x01":
                raise Corrupt("the server's sha256 of the upload did not match")
            s.verified += up  # the server vouched for it
            await s.receive_data(down)
            await s.stream.send_eof()
            await s.read_to_eof()

        return await self._run(node, target, port, "B", transfer, up + down, body, deadline)

    async def request_response(self, node: tsproc.Node, target: str, exchanges: int,
                               rng: random.Random) -> str:
        transfer = self.next_id()

        async def body(s: Session) -> None:
            await s.stream.send_all(HEADER.pack(MAGIC, b"R", transfer, exchanges, 0))
            for _ in range(exchanges):
                size = _size(rng, 4, 14)
                off = rng.randrange(len(self.pool.data) - size)
                payload = bytes(self.pool.data[off : off + size])
                await s.stream.send_all(U32.pack(size) + payload)
                (n,) = U32.unpack(await s.read_exactly(U32.size))
                digest = await s.read_exactly(32)
                echo = await s.read_exactly(n)
                if n != size or digest != hashlib.sha256(payload).digest() or echo != payload:
                    raise Corrupt("the response does not match the request")
                s.verified += size
            await s.stream.send_all(U32.pack(BYE))
            s.sent_all = True
            if await s.read_exactly(U32.size) != U32.pack(BYE):
                raise Corrupt("no bye after the last response")
            await s.stream.send_eof()
            await s.read_to_eof()

        return await self._run(node, target, SERVICE_PORT, "R", transfer, exchanges * RR_MAX,
                               body)

    async def _run(self, node: tsproc.Node, target: str, port: int, kind: str, transfer: int,
                   nbytes: int, body: Callable[[Session], object],
                   deadline: float | None = None) -> str:
        if deadline is None:
            deadline = trio.current_time() + deadline_for(nbytes)
        try:
            with trio.fail_at(deadline):
                stream = await self.timeline.dial(node, target, port)
        except Exception as exc:
            outcome, detail = classify(exc)
            self.ledger.record(transfer, "client", kind, Side("dial_" + outcome, False, 0, detail))
            return "dial_" + outcome
        self.counters.connections += 1
        s = Session(stream)
        try:
            with trio.fail_at(deadline):
                async with stream:
                    await body(s)  # type: ignore[misc]
        except Exception as exc:
            outcome, detail = classify(exc)
            self.ledger.record(transfer, "client", kind,
                               Side(outcome, s.sent_all, s.verified, detail))
            return outcome
        self.ledger.record(transfer, "client", kind, Side("complete", s.sent_all, s.verified))
        return "complete"

    async def udp_flow(self, node: tsproc.Node, target: str, count: int,
                       rng: random.Random) -> None:
        """*count* numbered datagrams to *target*'s echo port, paced; checks every echo."""
        c = self.counters
        flow = self.next_id()
        try:
            with trio.fail_after(30):
                conn = await node.dial_udp(target, UDP_PORT)
        except (trio.TooSlowError, *EXPECTED_ERRORS):
            c.udp_flow_errors += 1
            return
        c.udp_flows += 1
        tally = c.udp_by_target.setdefault("Go peer" if target == "soak-go" else "tsproc", [0, 0])
        seen: set[int] = set()
        sent = 0

        async def receive() -> None:
            while len(seen) < count:
                data = await conn.receive()
                try:
                    got_flow, seq = udp_parse(data)
                except Corrupt:
                    c.udp_corrupt += 1
                    continue
                if got_flow != flow or seq >= sent:
                    c.udp_stray += 1  # another flow's echo on a reused port: UDP, not loss
                elif seq in seen:
                    c.udp_duplicates += 1
                else:
                    seen.add(seq)
                    tally[1] += 1
                    c.udp_echoed += 1
                    c.udp_bytes += len(data)

        try:
            async with conn, trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                for seq in range(count):
                    size = _size(rng, 3, 10)
                    off = rng.randrange(len(self.pool.data) - size)
                    await conn.send(udp_datagram(flow, seq, bytes(self.pool.data[off:off + size])))
                    sent += 1
                    tally[0] += 1
                    c.udp_sent += 1
                    await trio.sleep(0.005)
                with trio.move_on_after(3):
                    while len(seen) < count:
                        await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
        except* EXPECTED_ERRORS:  # the socket ended (a helper restart): UDP's honest end
            c.udp_flow_errors += 1
