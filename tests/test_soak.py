"""The soak (issue 15, docs/reliability.md): its judge first — framing and ledger must catch a
truncation that looks clean and a corruption, or a passing soak proves nothing — then one
minute of the real thing, as `make test` runs it (`make soak` runs it longer)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from soak.protocol import Corrupt, EarlyEOF, Ledger, Pool, Session, Side, udp_datagram, udp_parse
from soak.run import GOPEER
from soak.timeline import Dial, Timeline
from tsproc import NodeState

ROOT = Path(__file__).resolve().parent.parent


async def _sent(pool: Pool, n: int, tamper=None) -> bytes:
    """What a sender of *n* bytes puts on the wire (data, then sha256), optionally tampered."""
    send, receive = trio.testing.memory_stream_pair()
    await Session(send).send_data(pool, random.Random(1), n)
    await send.aclose()
    wire = b""
    while chunk := await receive.receive_some():
        wire += chunk
    return tamper(wire) if tamper else wire


async def _receive(wire: bytes, n: int) -> Session:
    send, receive = trio.testing.memory_stream_pair()
    await send.send_all(wire)
    await send.send_eof()
    s = Session(receive)
    await s.receive_data(n)
    return s


async def test_intact_data_verifies():
    pool = Pool(7)
    s = await _receive(await _sent(pool, 300_000), 300_000)
    assert s.verified == 300_000


async def test_a_flipped_bit_is_corrupt():
    pool = Pool(7)
    wire = await _sent(pool, 100_000, lambda w: w[:5000] + bytes([w[5000] ^ 1]) + w[5001:])
    with pytest.raises(Corrupt):
        await _receive(wire, 100_000)


async def test_a_duplicated_segment_is_corrupt():
    pool = Pool(7)
    wire = await _sent(pool, 100_000, lambda w: w[:1000] + w[:1000] + w[2000:])
    with pytest.raises(Corrupt):
        await _receive(wire, 100_000)


async def test_a_truncation_that_ends_cleanly_is_an_early_eof():
    pool = Pool(7)
    wire = await _sent(pool, 100_000, lambda w: w[:60_000])
    with pytest.raises(EarlyEOF):
        await _receive(wire, 100_000)


def test_the_ledger_calls_a_clean_early_end_after_a_full_send_silently_wrong():
    ledger = Ledger()
    # 1: complete both sides. 2: the client saw a clean EOF although the server sent it all:
    # bytes lost behind an ending that looked clean. 3: the same EOF, but the server had
    # failed first and closed: an honest error. 4: corrupt on the server side.
    ledger.record(1, "client", "B", Side("complete", True, 10))
    ledger.record(1, "server", "B", Side("complete", True, 10))
    ledger.record(2, "client", "B", Side("eof_early", True, 0))
    ledger.record(2, "server", "B", Side("error", True, 10))
    ledger.record(3, "client", "B", Side("eof_early", True, 0))
    ledger.record(3, "server", "B", Side("error", False, 0))
    ledger.record(4, "client", "B", Side("corrupt", True, 0))
    ledger.record(4, "server", "B", Side("corrupt", False, 0))
    ledger.record(5, "client", "R", Side("dial_error", False, 0, "DialError: refused"))
    ledger.record(6, "client", "B", Side("unexpected", False, 0, "OSError: x"))
    assert set(ledger.sides) == {6}  # the others are judged and folded already
    assert ledger.reconcile(final=False).transfers == 6
    r = ledger.reconcile()
    assert r.transfers == 6
    assert r.completed == 1
    assert r.silently_wrong == 2
    assert r.errors == 3  # 3, 5 and 6
    assert r.dial_failures == 1
    assert r.unexpected == 1


def test_udp_datagrams_carry_their_own_check():
    data = udp_datagram(5, 9, b"payload")
    assert udp_parse(data) == (5, 9)
    with pytest.raises(Corrupt):
        udp_parse(data[:10] + b"X" + data[11:])
    with pytest.raises(Corrupt):
        udp_parse(data[:-1])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_one_minute_soak(tmp_path):
    """`make soak` for one minute: every fault kind the minute has room for, no silently
    wrong transfer, no leak, every node back with its IPs. The table is in the output."""
    if not GOPEER.exists():
        pytest.fail(f"{GOPEER} is missing: run the tests with `make test`, which builds it")
    out = tmp_path / "soak.json"
    minutes = os.environ.get("SOAK_CI_MINUTES", "1")
    proc = subprocess.run(
        [sys.executable, "-m", "soak", "--minutes", minutes, "--json", str(out)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=840,
    )
    print(proc.stdout)
    print(proc.stderr[-20000:], file=sys.stderr)
    assert proc.returncode == 0, f"soak failed:\n{proc.stdout}\n{proc.stderr[-5000:]}"
    result = json.loads(out.read_text())
    assert result["failures"] == []
    assert len(result["faults"]) >= 3, "the minute injected almost no faults"


async def test_a_slow_dial_is_excused_only_by_a_fault_on_one_of_its_ends():
    tl = Timeline()
    t0 = trio.current_time()
    tl.record(Dial("soak-a", "soak-b", 7000, t0 - 100, t0 - 90, "connected"))  # warm-up
    tl.start()
    tl.fault("sigkill", "soak-b", t0 + 10, 5.0)
    tl.fault("control_freeze", "soak-c", t0 + 100, 10.0)
    tl.record(Dial("soak-a", "soak-b", 7000, t0 + 12, t0 + 20, "connected"))  # excused
    tl.record(Dial("soak-a", "soak-c", 7000, t0 + 12, t0 + 20, "connected"))  # not
    tl.record(Dial("soak-a", "soak-b", 7000, t0 + 1, t0 + 9.9, "Cancelled"))  # ends before
    tl.record(Dial("soak-a", "soak-b", 7000, t0 + 16, t0 + 16.1, "connected"))  # fast
    tl.ip_names = {"100.64.0.1": "soak-a"}
    tl.go_dial({"dst": "100.64.0.1", "port": 7000, "outcome": "connected",  # control: all
                "start": t0 + 105 - tl.mono_offset, "end": t0 + 112 - tl.mono_offset})
    j = tl.judge()
    assert j.dials == {"tsproc": 4, "Go peer": 1}
    assert j.excused == {"sigkill": 1, "control_freeze": 1}
    assert len(j.unexcused) == 2
    assert any(d.startswith("soak-a->soak-c:7000") for d in j.unexcused)
    assert any("Cancelled" in d for d in j.unexcused)
    assert j.slowest is not None and j.slowest.dst == "soak-b"
    assert j.slowest.took == pytest.approx(8.9)


async def test_a_go_peer_deadline_counts_against_tsproc_when_the_helper_died_meanwhile():
    tl = Timeline()
    t0 = trio.current_time()
    tl.start()
    tl.ip_names = {"100.64.0.1": "soak-a", "100.64.0.2": "soak-b"}
    tl.state("soak-a", NodeState.RESTARTING, at=t0 + 20)
    tl.state("soak-a", NodeState.RUNNING, at=t0 + 22)
    tl.state("soak-b", NodeState.RESTARTING, at=t0 + 5)
    tl.state("soak-b", NodeState.RUNNING, at=t0 + 7)
    for transfer, peer in ((1, "100.64.0.1"), (2, "100.64.0.2")):
        tl.go_record(transfer, "server", "timeout", "read: i/o timeout",
                     {"peer": peer, "start": t0 + 10 - tl.mono_offset,
                      "end": t0 + 55 - tl.mono_offset})
    tl.go_record(3, "client", "error", "connection reset by peer",
                 {"peer": "100.64.0.1", "start": t0 + 10 - tl.mono_offset,
                  "end": t0 + 23 - tl.mono_offset})
    j = tl.judge()
    assert len(j.go_timeouts_died) == 1 and "soak-a" in j.go_timeouts_died[0]
    assert len(j.go_timeouts_other) == 1 and "soak-b" in j.go_timeouts_other[0]
