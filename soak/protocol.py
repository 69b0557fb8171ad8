"""The soak's wire protocol and its ledger: every transfer is framed so that a loss, a
corruption or a truncation that looks like a clean end cannot pass unnoticed.

TCP, one transfer per connection. A 32-byte header: ``b"SOAK"``, a kind byte, 3 pad bytes,
the transfer id, and two numbers *a*, *b* (big-endian u64).

- ``B`` (bulk, and short connections with small sizes): the client sends *a* bytes and their
  sha256; the server answers a status byte (1: the digest matched), *b* bytes and their sha256,
  then ends its side; the client ends its side once it has verified them.
- ``R`` (request/response): *a* exchanges, each a u32 length and a payload, answered by the
  u32 length, sha256(payload) and the payload; then a u32 0xFFFFFFFF "bye", echoed, and both
  sides end.
- ``P`` (probe): nothing follows; the server closes.

UDP: a datagram is ``b"SOKU"``, flow id (u64), sequence number (u64), payload length (u16), the
payload, and the first 16 bytes of the sha256 of all that; the server echoes it unchanged.

Each side of each transfer records one outcome in the :class:`Ledger`: ``complete``,
``error`` (an exception: ``BrokenResourceError``, a tsproc error …), ``eof_early`` (a clean EOF
before the protocol was done), ``corrupt`` (a digest, length or echo that does not match),
``timeout`` (the soak's own deadline) or ``unexpected`` (an exception tsproc should never let
out). :meth:`Ledger.reconcile` then decides, with both sides' records, which transfers were
*silently wrong*: corrupt anywhere, or a clean EOF early while the other side had sent
everything (the bytes were lost, and the ending looked clean).
"""

from __future__ import annotations

import copy
import hashlib
import random
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

import trio

import tsproc

HEADER: Final = struct.Struct(">4sc3xQQQ")
MAGIC: Final = b"SOAK"
BYE: Final = 0xFFFFFFFF
U32: Final = struct.Struct(">I")
DIGEST: Final = 32
UDP_HEADER: Final = struct.Struct(">4sQQH")
UDP_MAGIC: Final = b"SOKU"
UDP_DIGEST: Final = 16
POOL_SIZE: Final = 4 << 20
CHUNK: Final = 64 << 10
READ_SIZE: Final = 256 << 10
# The Go peer's transfer ids start here (soak/gopeer/main.go: idBase).
GO_ID_BASE: Final = 1 << 62

# What a transfer may end with and still be honest (issue 15): trio's stream errors and
# tsproc's own. Anything else escaping tsproc is a defect ("unexpected").
EXPECTED_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError,
                          tsproc.TsprocError)


class EarlyEOF(Exception):
    """A clean end of stream before the protocol was done."""


class Corrupt(Exception):
    """Bytes that do not match their digest, length or echo."""


def deadline_for(nbytes: int) -> float:
    """Seconds a transfer of *nbytes* may take before it counts as stuck (generous: the
    machine is shared; the Go peer uses the same formula)."""
    return 45.0 + nbytes / (256 << 10)


class Pool:
    """Random bytes transfers send slices of, at random offsets, so that a duplicated,
    dropped or reordered segment changes the digest."""

    def __init__(self, seed: int) -> None:
        self.data = memoryview(random.Random(seed).randbytes(POOL_SIZE))

    def chunks(self, rng: random.Random, n: int):  # type: ignore[no-untyped-def]
        while n > 0:
            size = min(n, CHUNK)
            off = rng.randrange(POOL_SIZE - size)
            yield self.data[off : off + size]
            n -= size


@dataclass
class Session:
    """One side of one transfer over a stream: buffered exact reads, verified byte counts,
    and whether this side has sent everything it ever will."""

    stream: trio.abc.HalfCloseableStream
    verified: int = 0
    sent_all: bool = False
    buf: bytearray = field(default_factory=bytearray)

    async def read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = await self.stream.receive_some(READ_SIZE)
            if not chunk:
                raise EarlyEOF(f"clean EOF after {len(self.buf)} of {n} bytes")
            self.buf += chunk
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def receive_data(self, n: int) -> None:
        """*n* bytes and their sha256; Corrupt if they do not match."""
        h = hashlib.sha256()
        remaining = n
        if self.buf:
            take = min(len(self.buf), remaining)
            h.update(self.buf[:take])
            del self.buf[:take]
            remaining -= take
        while remaining:
            chunk = await self.stream.receive_some(min(READ_SIZE, remaining))
            if not chunk:
                raise EarlyEOF(f"clean EOF after {n - remaining} of {n} bytes")
            h.update(chunk)
            remaining -= len(chunk)
        if await self.read_exactly(DIGEST) != h.digest():
            raise Corrupt(f"sha256 of {n} bytes does not match")
        self.verified += n

    async def send_data(self, pool: Pool, rng: random.Random, n: int) -> None:
        h = hashlib.sha256()
        for chunk in pool.chunks(rng, n):
            h.update(chunk)
            await self.stream.send_all(chunk)
        await self.stream.send_all(h.digest())

    async def read_to_eof(self) -> None:
        """The peer's clean end, and nothing before it."""
        extra = len(self.buf)
        while chunk := await self.stream.receive_some(READ_SIZE):
            extra += len(chunk)
        if extra:
            raise Corrupt(f"{extra} bytes after the end of the protocol")


def classify(exc: BaseException) -> tuple[str, str]:
    """(outcome, detail) for the exception that ended a transfer."""
    detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if isinstance(exc, EarlyEOF):
        return "eof_early", detail
    if isinstance(exc, Corrupt):
        return "corrupt", detail
    if isinstance(exc, trio.TooSlowError):
        return "timeout", detail
    if isinstance(exc, EXPECTED_ERRORS):
        return "error", detail
    return "unexpected", detail


@dataclass
class Side:
    outcome: str
    sent_all: bool
    verified: int
    detail: str = ""


@dataclass
class Reconciled:
    """What the ledger says once both sides' records are in."""

    transfers: int = 0
    completed: int = 0
    errors: int = 0
    dial_failures: int = 0
    timeouts: int = 0
    silently_wrong: int = 0
    unexpected: int = 0
    bytes_verified: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    error_kinds: Counter[str] = field(default_factory=Counter)
    wrong_details: list[str] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    unexpected_details: list[str] = field(default_factory=list)


class Ledger:
    """Every side of every transfer, by transfer id. A transfer is judged and folded into the
    running totals as soon as both its sides are in (or its dial failed: it has no server
    side), so that the ledger stays small however long the soak runs and the host's RSS
    measures tsproc, not the soak's bookkeeping."""

    def __init__(self) -> None:
        self.sides: dict[int, dict[str, Side]] = {}
        self.kinds: dict[int, str] = {}
        self.folded = Reconciled()

    def record(self, transfer: int, role: str, kind: str, side: Side) -> None:
        sides = self.sides.setdefault(transfer, {})
        sides[role] = side
        self.kinds[transfer] = kind
        if len(sides) == 2 or (role == "client" and side.outcome.startswith("dial_")):
            _judge(self.folded, transfer, kind, sides)
            del self.sides[transfer], self.kinds[transfer]

    def reconcile(self, final: bool = True) -> Reconciled:
        """The totals, with the transfers still waiting for a side judged on what they have.
        Not *final* (a progress report): a transfer whose client has not yet recorded is
        still in flight, not wrong."""
        r = copy.deepcopy(self.folded)
        for transfer, sides in self.sides.items():
            if "client" in sides or final:
                _judge(r, transfer, self.kinds[transfer], sides)
        return r


def _judge(r: Reconciled, transfer: int, kind: str, sides: dict[str, Side]) -> None:
    client, server = sides.get("client"), sides.get("server")
    r.bytes_verified += sum(s.verified for s in sides.values())
    if client is None:
        # A server record without its client: every client records its end (the Go peer's
        # too), so this is a transfer whose client side went missing; keep it visible.
        r.silently_wrong += 1
        r.wrong_details.append(f"transfer {transfer:#x}: server record without client")
        return
    r.transfers += 1
    r.by_kind[kind] += 1
    wrong = ""
    for role, side, other in (("client", client, server), ("server", server, client)):
        if side is None:
            continue
        if side.outcome == "corrupt":
            wrong = f"{role}: {side.detail}"
        elif side.outcome == "eof_early" and other is not None and other.sent_all:
            wrong = f"{role}: clean EOF early although the {other_role(role)} sent all" \
                    f" ({side.detail})"
        elif side.outcome.endswith("unexpected"):
            r.unexpected += 1
            r.unexpected_details.append(f"transfer {transfer:#x} {role}: {side.detail}")
    if wrong:
        r.silently_wrong += 1
        r.wrong_details.append(f"transfer {transfer:#x} ({kind}): {wrong}")
    elif client.outcome == "complete":
        r.completed += 1
    else:
        r.errors += 1
        if client.outcome.startswith("dial_"):
            r.dial_failures += 1
        if client.outcome.endswith("timeout"):
            r.timeouts += 1
        go = "go " if transfer >= GO_ID_BASE else ""
        r.error_kinds[f"{go}{client.outcome}: {client.detail.split(':')[0]}"] += 1
        if len(r.error_samples) < 200:
            r.error_samples.append(
                f"{transfer:#x} {kind} client {client.outcome} [{client.detail}] server "
                + (f"{server.outcome} sent_all={server.sent_all} [{server.detail}]"
                   if server else "-"))


def other_role(role: str) -> str:
    return "server" if role == "client" else "client"


def udp_datagram(flow: int, seq: int, payload: bytes) -> bytes:
    head = UDP_HEADER.pack(UDP_MAGIC, flow, seq, len(payload)) + payload
    return head + hashlib.sha256(head).digest()[:UDP_DIGEST]


def udp_parse(data: bytes) -> tuple[int, int]:
    """(flow, seq) of an echoed datagram; Corrupt if it is not one intact."""
    if len(data) < UDP_HEADER.size + UDP_DIGEST:
        raise Corrupt(f"datagram of {len(data)} bytes")
    head, digest = data[:-UDP_DIGEST], data[-UDP_DIGEST:]
    magic, flow, seq, length = UDP_HEADER.unpack_from(head)
    if magic != UDP_MAGIC or length != len(head) - UDP_HEADER.size:
        raise Corrupt("datagram header does not match its length")
    if hashlib.sha256(head).digest()[:UDP_DIGEST] != digest:
        raise Corrupt("datagram digest does not match")
    return flow, seq
