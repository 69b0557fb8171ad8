"""The soak's result table (docs/reliability.md shows one)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from . import faults
from .protocol import Reconciled
from .state import Config, Soak
from .timeline import SLOW_DIAL, Judged
from .workload import Counters


def _fmt_bytes(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"


def table(cfg: Config, minutes: float, soak: Soak | None, r: Reconciled, c: Counters,
           leaks: Counter[str], rss_start: int, rss_end: int, load_start: str, load_end: str,
           results: dict[str, Any], j: Judged) -> str:
    fault_counts: Counter[str] = Counter(f.kind for f in soak.faults) if soak else Counter()
    failed_faults = sum(1 for f in soak.faults if f.failed) if soak else 0
    restarts = sum(len(sn.restarts) for sn in soak.nodes) if soak else 0
    expected = sum(n for k, n in fault_counts.items()
                   if k in faults.ENDS_HELPER)
    recoveries = [f for f in soak.faults if f.recovery is not None] if soak else []
    slowest = max(recoveries, key=lambda f: f.recovery or 0, default=None)
    reasons: Counter[str] = Counter()
    for sn in soak.nodes if soak else []:
        for _, reason in sn.restarts:
            reasons[reason.split(":")[0].split(" (")[0]] += 1
    rows = [
        ("seed", str(cfg.seed)),
        ("minutes", f"{minutes:.1f}"),
        ("nodes", f"{cfg.nodes} tsproc nodes in one host process + 1 pure-Go tsnet peer"),
        ("load average at start / end", f"{load_start} / {load_end}"),
        ("connections", str(c.connections)),
        ("bytes verified (sha256)", _fmt_bytes(r.bytes_verified)),
        ("transfers", f"{r.transfers} ("
         + ", ".join(f"{ {'B': 'bulk/short', 'R': 'request/response'}.get(k, k)} {n}"
                     for k, n in sorted(r.by_kind.items())) + ")"),
        ("completed", str(r.completed)),
        ("ended with an error", f"{r.errors} (dial failed {r.dial_failures}, "
                                f"deadline hit {r.timeouts})"),
        ("**silently wrong (must be 0)**", f"**{r.silently_wrong}**"),
        ("unexpected exception types (must be 0)", str(r.unexpected)),
        ("UDP datagrams sent / echoed intact / lost / duplicated / corrupt",
         f"{c.udp_sent} / {c.udp_echoed} / {c.udp_sent - c.udp_echoed} / "
         f"{c.udp_duplicates} / {c.udp_corrupt} ({c.udp_flows} flows, "
         f"{c.udp_flow_errors} ended by a restart; lost "
         + ", ".join(f"to {k} {100 * (s - e) / max(1, s):.0f} %"
                     for k, (s, e) in sorted(c.udp_by_target.items())) + ")"),
        ("listeners opened / closed", f"{c.listeners_opened} / {c.listeners_closed}"),
        ("faults injected", f"{sum(fault_counts.values())}: " + ", ".join(
            f"{k} {fault_counts[k]}" for k in faults.KINDS if fault_counts[k])),
        ("faults that showed a defect (must be 0)", str(failed_faults)),
        ("dials (tsproc / Go peer)", f"{sum(j.dials.values())} ({j.dials['tsproc']} / "
                                     f"{j.dials['Go peer']})"),
        ("slowest dial", f"{j.slowest.took:.2f} s ({j.slowest.src}->{j.slowest.dst}, "
         f"{j.slowest.outcome}{'; ' if j.slowest_excuse else ''}{j.slowest_excuse})"
         if j.slowest else "-"),
        (f"**dials > {SLOW_DIAL:g} s, no fault on either end (must be 0)**",
         f"**{len(j.unexcused)}**"),
        (f"dials > {SLOW_DIAL:g} s during a fault on one of their ends",
         f"{sum(j.excused.values())}" + (" (" + ", ".join(
             f"{k} {j.excused[k]}" for k in faults.KINDS if j.excused[k]) + ")"
             if j.excused else "")),
        ("**Go peer read deadlines hit, the tsproc end's helper died (must be 0)**",
         f"**{len(j.go_timeouts_died)}**"),
        ("Go peer read deadlines hit, other causes", str(len(j.go_timeouts_other))),
        ("helper restarts", f"{restarts} ({expected} from faults; by reason: "
         + ", ".join(f"{k} {n}" for k, n in reasons.most_common()) + ")"),
        ("slowest recovery", f"{slowest.recovery:.1f} s ({slowest.kind} on {slowest.node})"
         if slowest else "-"),
        ("leaks (must be 0)", f"{sum(leaks.values())} (" + ", ".join(
            f"{k} {n}" for k, n in sorted(leaks.items())) + ")"),
        ("host RSS start / peak / end", f"{rss_start >> 20} MiB / "
         f"{results.get('rss_peak', 0) >> 20} MiB / {rss_end >> 20} MiB"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'':{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {k:{width}} | {v} |" for k, v in rows]
    return "\n".join(lines)
