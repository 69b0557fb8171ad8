"""When things happened, for the two promises of issue 27 that only timing shows: no dial to a
running, reachable peer takes longer than 5 s unless a fault targeted one of its ends, and no
connection of the Go peer ends in its own read deadline ("i/o timeout") because the tsproc end's
helper died (the new helper resets the peer at once: docs/reliability.md).

Every dial is timed (the tsproc nodes' here, the Go peer's on its stdout), every fault leaves a
window from its injection to the soak's recovery, and every node's helper deaths are noted as
they happen; :meth:`Timeline.judge` sets them against each other once the run is over. All
times are trio's clock (CLOCK_MONOTONIC plus trio's offset).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field

import trio

import tsproc

# A dial that takes longer than this is slow: on the local tailnet a dial takes ~2 ms, and one
# whose SYN was lost is retried after 1 s (helper/internal/timewait).
SLOW_DIAL = 5.0

# The nodes a fault affects, for excusing a slow dial: the faulted node for every kind (its
# helper dies and is replaced: sigkill, sigstop, crash_loop, memory_limit; its service listener
# is closed for a moment: close_listener; its own dials are cancelled: cancel_dials; its
# listener is flooded, and the fault's own 64 dials go to it: saturate) but control_freeze,
# which affects every node: the frozen process is the whole tailnet's control server *and* its
# DERP relay and STUN server, so while it is stopped no node can reach a peer whose path is not
# direct at that moment (disco finds and re-validates paths through the relay), and which path a
# dial takes is not visible from here. Dials it excuses are counted apart in the table, so that
# a stall under a frozen control stays visible.
AFFECTS_ALL = frozenset({"control_freeze"})

GO_NAME = "soak-go"  # the pure-Go peer's name, as a dial's end


@dataclass(frozen=True, slots=True)
class Dial:
    """One dial: from node *src* to node *dst* (names), and how it ended: "connected", or the
    exception's type ("Cancelled": its deadline, or a cancel_dials fault)."""

    src: str
    dst: str
    port: int
    start: float
    end: float
    outcome: str
    detail: str = ""

    @property
    def took(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Window:
    """A fault on *node*, from its injection to the soak's recovery (inf if never)."""

    kind: str
    node: str
    start: float
    end: float

    def excuses(self, dial: Dial) -> bool:
        return ((self.kind in AFFECTS_ALL or self.node in (dial.src, dial.dst))
                and self.start < dial.end and dial.start < self.end)


@dataclass(frozen=True, slots=True)
class GoTimeout:
    """A connection of the Go peer that ended in its own deadline ("i/o timeout")."""

    transfer: int
    role: str
    node: str  # the tsproc end
    start: float
    end: float
    detail: str


@dataclass
class Judged:
    """What :meth:`Timeline.judge` found."""

    dials: Counter[str] = field(default_factory=Counter)  # by origin: "tsproc", "Go peer"
    slowest: Dial | None = None
    slowest_excuse: str = ""
    unexcused: list[str] = field(default_factory=list)  # slow dials no fault explains
    excused: Counter[str] = field(default_factory=Counter)  # slow dials by the fault's kind
    excused_details: list[str] = field(default_factory=list)
    go_timeouts_died: list[str] = field(default_factory=list)  # the tsproc end's helper died
    go_timeouts_other: list[str] = field(default_factory=list)


class Timeline:
    """Dials, fault windows and helper deaths; only slow dials are kept (a 30-minute run makes
    ~100,000 dials), with the count and the slowest."""

    def __init__(self) -> None:
        self.recording = False  # from the end of the warm-up: first contacts are not judged
        self.base = 0.0  # where the report's "+N s" count from
        self.dials: Counter[str] = Counter()
        self.slowest: Dial | None = None
        self.slow: list[Dial] = []
        self.windows: list[Window] = []
        self.states: dict[str, list[tuple[float, str]]] = {}  # node -> (time, state)
        self.go_timeouts: list[GoTimeout] = []
        self.ip_names: dict[str, str] = {}
        # CLOCK_MONOTONIC (the Go peer's times) to trio's clock.
        self.mono_offset = trio.current_time() - time.monotonic()

    def start(self) -> None:
        self.recording = True
        self.base = trio.current_time()

    def name_of(self, ip: str) -> str:
        return self.ip_names.get(ip, ip)

    def from_monotonic(self, t: float) -> float:
        return t + self.mono_offset

    def record(self, dial: Dial, origin: str = "tsproc") -> None:
        if not self.recording:
            return
        self.dials[origin] += 1
        if self.slowest is None or dial.took > self.slowest.took:
            self.slowest = dial
        if dial.took > SLOW_DIAL:
            self.slow.append(dial)

    async def dial(self, node: tsproc.Node, dst: str, port: int) -> tsproc.TailnetStream:
        """``node.dial(dst, port)``, timed, whatever its end."""
        start = trio.current_time()
        outcome, detail = "connected", ""
        try:
            return await node.dial(dst, port)
        except BaseException as exc:
            outcome = type(exc).__name__
            detail = str(exc).splitlines()[0] if str(exc) else ""
            raise
        finally:
            self.record(Dial(node.hostname, dst, port, start, trio.current_time(), outcome,
                             detail))

    def state(self, node: str, state: tsproc.NodeState, at: float | None = None) -> None:
        """The node's state changed (its helper died: RESTARTING), now or *at*."""
        history = self.states.setdefault(node, [])
        if not history or history[-1][1] != state.value:
            history.append((trio.current_time() if at is None else at, state.value))

    def fault(self, kind: str, node: str, start: float, recovery: float | None) -> None:
        self.windows.append(Window(kind, node, start,
                                   start + recovery if recovery is not None else math.inf))

    def go_record(self, transfer: int, role: str, outcome: str, detail: str,
                  msg: dict[str, object]) -> None:
        """A transfer end the Go peer reported; kept if its deadline ended it."""
        if outcome != "timeout" or "start" not in msg:
            return
        start, end = msg["start"], msg["end"]
        assert isinstance(start, float | int) and isinstance(end, float | int)
        self.go_timeouts.append(GoTimeout(transfer, role, self.name_of(str(msg.get("peer"))),
                                          self.from_monotonic(start), self.from_monotonic(end),
                                          detail))

    def go_dial(self, msg: dict[str, object]) -> None:
        start, end, port = msg["start"], msg["end"], msg["port"]
        assert isinstance(start, float | int) and isinstance(end, float | int)
        assert isinstance(port, int)
        self.record(Dial(GO_NAME, self.name_of(str(msg["dst"])), port,
                         self.from_monotonic(start), self.from_monotonic(end),
                         str(msg["outcome"]), str(msg.get("detail", ""))), origin="Go peer")

    def _deaths(self, node: str, start: float, end: float) -> list[float]:
        return [t for t, s in self.states.get(node, ())
                if s == tsproc.NodeState.RESTARTING.value and start < t <= end]

    def _states_during(self, node: str, start: float, end: float) -> str:
        """The node's state when *start* came and its changes until *end*."""
        if node == GO_NAME:
            return f"{node} (pure Go, never faulted)"
        history = self.states.get(node, [])
        before = [s for t, s in history if t <= start]
        parts = [f"{node} {before[-1] if before else 'running'}"]
        parts += [f"{s} at +{t - start:.1f} s" for t, s in history if start < t <= end]
        return ", ".join(parts)

    def describe(self, dial: Dial) -> str:
        near = [w for w in self.windows if w.start < dial.end + 5 and dial.start < w.end + 5]
        return (f"{dial.src}->{dial.dst}:{dial.port} at +{dial.start - self.base:.1f} s took "
                f"{dial.took:.1f} s, {dial.outcome}"
                + (f" ({dial.detail})" if dial.detail else "")
                + f"; {self._states_during(dial.src, dial.start, dial.end)}; "
                + f"{self._states_during(dial.dst, dial.start, dial.end)}; faults near: "
                + (", ".join(f"{w.kind} on {w.node} +{w.start - self.base:.1f}.."
                             f"+{w.end - self.base:.1f} s" for w in near) or "none"))

    def judge(self) -> Judged:
        j = Judged(dials=Counter(self.dials), slowest=self.slowest)
        for dial in self.slow:
            excuse = next((w for w in self.windows if w.excuses(dial)), None)
            if excuse is None:
                j.unexcused.append(self.describe(dial))
            else:
                j.excused[excuse.kind] += 1
                j.excused_details.append(self.describe(dial))
        if self.slowest is not None:
            excuse = next((w for w in self.windows if w.excuses(self.slowest)), None)
            j.slowest_excuse = (f"excused: {excuse.kind} on {excuse.node}" if excuse
                                else "not excused" if self.slowest.took > SLOW_DIAL else "")
        for t in self.go_timeouts:
            what = (f"go {t.role} transfer {t.transfer:#x} with {t.node}, "
                    f"+{t.start - self.base:.1f}..+{t.end - self.base:.1f} s: {t.detail}; "
                    f"{self._states_during(t.node, t.start, t.end)}")
            died = self._deaths(t.node, t.start, t.end)
            (j.go_timeouts_died if died else j.go_timeouts_other).append(what)
        return j
