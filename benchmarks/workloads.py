"""The benchmark workloads, shared by every line (peer.py and gobench get them as JSON).

Each mode is one :class:`Workload`. The client runs the idle connections first (on fresh
processes, whose RSS growth then means something), then bulk, round trips, set-up and
start-up. Fields:

- ``bulk_seconds``: each bulk run sends for this long, then half-closes and waits for the
  server's byte count (so the figure includes draining every buffer on the way).
- ``bulk_streams``: the second bulk run's number of parallel connections (the first uses 1).
- ``chunk_size``: the client's write size in bulk runs.
- ``rr_count`` / ``rr_warmup`` / ``rr_size``: timed and untimed request/response exchanges of
  ``rr_size`` bytes on one connection.
- ``setup_count``: sequential connections, each dial + 1-byte echo + close.
- ``idle_conns`` / ``dial_parallel``: connections opened (``dial_parallel`` at a time) and
  held open while memory is read.
- ``startup_repeats``: extra nodes the client starts one after another, to time start-up
  (the client's and the server's own start-ups are counted too).
- ``phases``: which workloads run (all by default; narrower runs help profiling).
- ``want_direct`` / ``direct_wait``: on the direct path, echo until the peer shows a direct
  ``cur_addr``, for at most this many seconds (set by the runner per path).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

ALL_PHASES = ("bulk", "rr", "setup", "idle", "startup")


@dataclass(frozen=True)
class Workload:
    bulk_seconds: float
    bulk_streams: int
    chunk_size: int
    rr_count: int
    rr_warmup: int
    rr_size: int
    setup_count: int
    idle_conns: int
    dial_parallel: int
    startup_repeats: int
    want_direct: bool = True
    direct_wait: float = 10.0
    phases: tuple[str, ...] = field(default=ALL_PHASES)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["phases"] = list(self.phases)
        return out


MODES: dict[str, Workload] = {
    # `make bench`: one trial per line and path, under two minutes on two busy cores.
    "quick": Workload(
        bulk_seconds=1.0, bulk_streams=8, chunk_size=256 << 10,
        rr_count=2000, rr_warmup=200, rr_size=64,
        setup_count=100, idle_conns=1000, dial_parallel=32, startup_repeats=1,
    ),
    # `make bench-full`: longer runs, repeated (run.py --repeats, default 3) for medians.
    "full": Workload(
        bulk_seconds=4.0, bulk_streams=8, chunk_size=256 << 10,
        rr_count=10000, rr_warmup=500, rr_size=64,
        setup_count=500, idle_conns=1000, dial_parallel=32, startup_repeats=3,
    ),
    # The test suite's smoke run: every code path, small sizes. CPU comes from /proc in clock
    # ticks (10 ms), so each phase that reports CPU runs long enough to be charged some: 5
    # set-ups (~25 ms of CPU over four processes) were once charged none at all.
    "smoke": Workload(
        bulk_seconds=0.2, bulk_streams=2, chunk_size=64 << 10,
        rr_count=300, rr_warmup=5, rr_size=64,
        setup_count=60, idle_conns=10, dial_parallel=4, startup_repeats=0,
        want_direct=False, direct_wait=0.0,
    ),
}
