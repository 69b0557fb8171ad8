"""Figures from the trials, and the JSON, markdown and PNG written from them.

Every figure is first computed per trial (:func:`summarize_trial`), then the median over a
line's trials on one path is taken, then tsproc is divided by the pure-Go line of the same
path and the same run.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .run import Trial

README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    digits: int = 0


METRICS: list[Metric] = [
    Metric("bulk1_MBps", "bulk, 1 stream", "MB/s", True),
    Metric("bulk8_MBps", "bulk, 8 streams", "MB/s", True),
    Metric("rr_median_us", "64 B round trip, median", "µs", False),
    Metric("rr_p99_us", "64 B round trip, p99", "µs", False),
    Metric("rr_cpu_us", "CPU per round trip, all processes³", "µs", False),
    Metric("rr_host_cpu_us", "CPU per round trip, Python hosts³", "µs", False),
    Metric("setup_per_s", "connection set-up (sequential)", "conn/s", True),
    Metric("setup_median_us", "connection set-up latency, median", "µs", False),
    Metric("setup_p99_us", "connection set-up latency, p99", "µs", False),
    Metric("setup_cpu_us", "CPU per connection set-up, all processes³", "µs", False),
    Metric("setup_host_cpu_us", "CPU per connection set-up, Python hosts³", "µs", False),
    Metric("startup_s", "start-up to running, median", "s", False, 2),
    Metric("node_rss_idle_MB", "node process RSS, idle¹", "MB", False, 1),
    Metric("node_rss_load_MB", "node process RSS, peak in bulk¹", "MB", False, 1),
    Metric("host_rss_idle_MB", "Python host RSS, idle", "MB", False, 1),
    Metric("idle_conns_MB_per_1k", "1,000 idle conns, all processes²", "MB", False, 1),
    Metric("idle_conns_helper_MB_per_1k", "1,000 idle conns, helpers²", "MB", False, 1),
    Metric("idle_conns_host_MB_per_1k", "1,000 idle conns, Python hosts²", "MB", False, 1),
    Metric("cpu_s_per_GiB", "CPU per GiB moved, all processes³", "s/GiB", False, 2),
    Metric("host_cpu_s_per_GiB", "CPU per GiB moved, Python hosts³", "s/GiB", False, 2),
    Metric("helper_cpu_s_per_GiB", "CPU per GiB moved, helpers³", "s/GiB", False, 2),
]
METRIC_BY_KEY = {m.key: m for m in METRICS}
FOOTNOTES = [
    "¹ The process that runs the Tailscale node: tsproc's helper, the Go program itself; the "
    "larger of client and server.",
    "² RSS growth of the client and server processes together while 1,000 connections "
    "between them are open and idle (both ends counted), scaled to 1,000.",
    "³ utime+stime of the client and server processes (both ends), over both bulk runs per "
    "GiB delivered, over the round-trip run per round trip, or over the set-up run per "
    "connection.",
    "⁴ The helper hop line: one Python host and its helper, no tailnet; each connection is "
    "bridged to an echo inside the helper (helper/testhook_benchecho.go), so a round trip is "
    "host → helper → host.",
    "⁵ The forward line: the same client workloads through node.forward()'s Unix socket (the "
    "helper pumps between it and the tailnet) instead of dial; the server is tsproc's. "
    "'forward ÷ dial' compares it with the tsproc column.",
    "⁶ tsproc with `Node(memory_profile=\"small\")` (README, \"A node on a small machine\").",
]
LINE_LABELS = {
    "tsproc": "tsproc",
    "go": "pure Go",
    "kernel": "kernel (Go TCP)",
    "trio-tcp": "trio TCP",
    "hop": "helper hop⁴",
    "base": "baseline",
    "aio": "asyncio face",
    "forward": "forward⁵",
    "small": "small memory",
}
# Lines shown beside tsproc, each as its figures and their ratio to tsproc's: (line, column
# label, ratio label, the result's key for the ratios).
VARIANTS = (
    ("aio", "asyncio face", "asyncio ÷ trio", "ratios_aio_to_trio"),
    ("forward", "forward⁵", "forward ÷ dial", "ratios_forward_to_dial"),
    ("small", "small memory⁶", "small ÷ tsproc", "ratios_small_to_tsproc"),
)
PATH_LABELS = {"direct": "direct UDP path", "derp": "DERP relay path", "loopback": "loopback TCP"}


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(samples)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _roles(trial: Trial) -> tuple[list[str], list[str]]:
    """(node roles, Python-host roles): where the Tailscale node runs, and the tsproc hosts."""
    if trial.line.name in ("tsproc", "aio", "base", "forward", "small"):
        return ["client_helper", "server_helper"], ["client_host", "server_host"]
    if trial.line.name == "hop":  # its server process does nothing
        return ["client_helper"], ["client_host"]
    return ["client_host", "server_host"], []


def _sum(snapshot: dict[str, Any], kind: str, roles: Iterable[str]) -> float:
    return sum(snapshot[kind].get(role, 0.0) for role in roles)


def summarize_trial(trial: Trial) -> dict[str, Any]:
    r, marks = trial.result, trial.marks
    node, host = _roles(trial)
    every = node + host
    m: dict[str, Any] = {}
    moved = 0
    cpu_all = cpu_host = cpu_node = 0.0
    peak_node = 0.0
    runs = sorted((v["streams"], k) for k, v in r.items()
                  if k.startswith("bulk") and isinstance(v, dict))
    for streams, name in runs:
        run = r[name]
        key = "bulk1" if streams == 1 else "bulk8"  # the multi-stream run, 8 unless smoke
        m[f"{key}_MBps"] = run["bytes"] / run["seconds"] / 1e6
        moved += run["bytes"]
        start, end = marks[f"{name}_start"], marks[f"{name}_end"]
        cpu_all += _sum(end, "cpu_s", every) - _sum(start, "cpu_s", every)
        cpu_host += _sum(end, "cpu_s", host) - _sum(start, "cpu_s", host)
        cpu_node += _sum(end, "cpu_s", node) - _sum(start, "cpu_s", node)
        for t, rss in trial.samples:
            if start["t"] <= t <= end["t"]:
                peak_node = max([peak_node, *(rss.get(role, 0.0) for role in node)])
    if moved:
        gib = moved / 2**30
        m["cpu_s_per_GiB"] = cpu_all / gib
        if host:
            m["host_cpu_s_per_GiB"] = cpu_host / gib
            m["helper_cpu_s_per_GiB"] = cpu_node / gib
        m["node_rss_load_MB"] = peak_node
    if r.get("rr_us"):
        m["rr_median_us"] = statistics.median(r["rr_us"])
        m["rr_p99_us"] = percentile(r["rr_us"], 99)
        if "rr_start" in marks and "rr_end" in marks:
            start, end = marks["rr_start"], marks["rr_end"]
            # Warm-up round trips run inside the marks too.
            n_rr = len(r["rr_us"]) + int(r.get("rr_warmup", 0))
            m["rr_cpu_us"] = (_sum(end, "cpu_s", every) - _sum(start, "cpu_s", every)) \
                / n_rr * 1e6
            if host:
                m["rr_host_cpu_us"] = (_sum(end, "cpu_s", host)
                                       - _sum(start, "cpu_s", host)) / n_rr * 1e6
    if r.get("setup_us"):
        m["setup_per_s"] = len(r["setup_us"]) / (sum(r["setup_us"]) / 1e6)
        m["setup_median_us"] = statistics.median(r["setup_us"])
        m["setup_p99_us"] = percentile(r["setup_us"], 99)
        if "setup_start" in marks and "setup_end" in marks:
            start, end = marks["setup_start"], marks["setup_end"]
            n_setups = len(r["setup_us"])
            m["setup_cpu_us"] = (_sum(end, "cpu_s", every) - _sum(start, "cpu_s", every)) \
                / n_setups * 1e6
            if host:
                m["setup_host_cpu_us"] = (_sum(end, "cpu_s", host)
                                          - _sum(start, "cpu_s", host)) / n_setups * 1e6
    startups = [s for s in [*r.get("startup_s", []), trial.server_startup_s] if s > 0]
    if startups:
        m["startup_s"] = statistics.median(startups)
        m["startup_samples"] = len(startups)
    idle = marks.get("idle")
    if idle:
        m["node_rss_idle_MB"] = max(idle["rss_mb"].get(role, 0.0) for role in node)
        if host:
            m["host_rss_idle_MB"] = max(idle["rss_mb"].get(role, 0.0) for role in host)
    n = r.get("idle_conns", 0)
    if n and "conns_before" in marks and "conns_open" in marks:
        before, after = marks["conns_before"], marks["conns_open"]

        def per_1k(roles: list[str]) -> float:
            return (_sum(after, "rss_mb", roles) - _sum(before, "rss_mb", roles)) * 1000 / n

        m["idle_conns_MB_per_1k"] = per_1k(every)
        if host:
            m["idle_conns_helper_MB_per_1k"] = per_1k(node)
            m["idle_conns_host_MB_per_1k"] = per_1k(host)
    for when in ("path_before", "path_after"):
        if when in r:
            m[when] = r[when]
    return m


def one_line(m: dict[str, Any]) -> str:
    parts = []
    for key, fmt in (("bulk1_MBps", "bulk1 {:.0f} MB/s"), ("bulk8_MBps", "bulk8 {:.0f} MB/s"),
                     ("rr_median_us", "rr {:.0f} µs"), ("setup_median_us", "setup {:.0f} µs"),
                     ("startup_s", "start {:.2f} s"), ("node_rss_idle_MB", "rss {:.0f} MB")):
        if key in m:
            parts.append(fmt.format(m[key]))
    path = m.get("path_before", {})
    if path.get("cur_addr") and path["cur_addr"] != "loopback":
        parts.append(f"direct {path['cur_addr']}")
    elif path.get("relay"):
        parts.append(f"DERP {path['relay']}")
    return ", ".join(parts)


def build(*, trials: list[Trial], mode: str, workload: dict[str, Any], machine: dict[str, Any],
          repeats: int, elapsed: float) -> dict[str, Any]:
    per_trial = []
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for trial in trials:
        m = summarize_trial(trial)
        per_trial.append({"line": trial.line.name, "path": trial.path, "repeat": trial.repeat,
                          "wall_s": round(trial.wall_s, 2), "metrics": m})
        groups.setdefault((trial.path, trial.line.name), []).append(m)
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for (path, line), ms in groups.items():
        agg: dict[str, Any] = {}
        for metric in METRICS:
            values = [x[metric.key] for x in ms if metric.key in x]
            if values:
                agg[metric.key] = statistics.median(values)
        agg["trials"] = len(ms)
        agg["direct"] = [bool(x.get("path_before", {}).get("direct")) for x in ms]
        agg["cur_addr"] = sorted({x.get("path_before", {}).get("cur_addr", "") for x in ms})
        summary.setdefault(path, {})[line] = agg
    def divide(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
        return {metric.key: a[metric.key] / b[metric.key] for metric in METRICS
                if metric.key in a and b.get(metric.key)}

    ratios: dict[str, dict[str, float]] = {}
    base_ratios: dict[str, dict[str, float]] = {}
    variant_ratios: dict[str, dict[str, dict[str, float]]] = {v[3]: {} for v in VARIANTS}
    for path, lines in summary.items():
        if "tsproc" in lines and "go" in lines:
            ratios[path] = divide(lines["tsproc"], lines["go"])
        if "tsproc" in lines and "base" in lines:
            base_ratios[path] = divide(lines["tsproc"], lines["base"])
        for line, _, _, key in VARIANTS:
            if "tsproc" in lines and line in lines:
                variant_ratios[key][path] = divide(lines[line], lines["tsproc"])
    return {
        "schema": 1,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "repeats": repeats,
        "elapsed_s": round(elapsed, 1),
        "workload": workload,
        "machine": machine,
        "summary": summary,
        "ratios_to_go": ratios,
        "ratios_to_base": base_ratios,
        **variant_ratios,
        "goals": goals(summary),
        "trials": per_trial,
    }


# Why a goal can be missed: what the profiles of benchmarks/README.md ("Findings") showed.
# Written into the results next to every goal that a run misses; keyed by Goal.kind.
WHY_MISSED = {
    "bulk": "every byte crosses one more AF_UNIX socketpair at each end (two more kernel "
    "copies and a syscall and wake-up per chunk on each side, plus the Python process); on "
    "two shared cores the lines are CPU-bound, so the extra CPU per GiB shows up as "
    "throughput (compare 'CPU per GiB moved').",
    "hop": "a round trip crosses four more process boundaries (application and helper at "
    "both ends); each is a wake-up of another process, which on two busy shared cores often "
    "waits for a CPU (see the CPU pressure in the header, and the helper hop line).",
    "setup": "a connection costs four control-channel messages (dial and its answer with the "
    "fd, accepted with the fd, the conn_end before the server's EOF; a grant per half "
    "backlog), a socketpair, fd passing and pump goroutines at each end, and in each host "
    "the wake-ups those messages cause (benchmarks/README.md, issue 26 §1).",
    "idle": "each bridged connection holds its pump goroutines and a socketpair in each "
    "helper, on top of tsnet's own per-connection state (benchmarks/README.md).",
    "rss": "tsnet's own buffers under load (wireguard-go's message buffers, netstack's "
    "windows): compare pure Go's process.",
    "start-up": "tsnet's own start-up; compare pure Go's on the same path.",
}


def hop_overhead_us(summary: dict[str, dict[str, dict[str, Any]]], path: str) -> float | None:
    """What the helper hop adds to a round trip: (tsproc - pure Go) - (trio TCP - Go TCP),
    medians; without the loopback lines, tsproc - pure Go."""
    lines, loop = summary.get(path, {}), summary.get("loopback", {})
    try:
        diff = lines["tsproc"]["rr_median_us"] - lines["go"]["rr_median_us"]
    except KeyError:
        return None
    try:
        return diff - (loop["trio-tcp"]["rr_median_us"] - loop["kernel"]["rr_median_us"])
    except KeyError:
        return diff


def goals(summary: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The goals of issues 16 and 26 (26 set the set-up, CPU and round-trip ratios in place of
    16's stricter ones, and the small memory profile's). Relative ones are judged on every path
    where both lines ran; start-up and idle memory once, on the direct path's configuration
    (forcing DERP with TS_DEBUG_ALWAYS_USE_DERP slows tsnet's own start-up, pure Go's as much
    as tsproc's)."""
    out: list[dict[str, Any]] = []

    def add(path: str, kind: str, goal: str, value: float, target: str, met: bool) -> None:
        entry = {"path": path, "kind": kind, "goal": goal, "value": round(value, 3),
                 "target": target, "met": met}
        if not met:
            entry["why"] = WHY_MISSED.get(kind, "")
        out.append(entry)

    def ratio(path: str, key: str) -> float | None:
        ts, go = summary[path]["tsproc"].get(key), summary[path]["go"].get(key)
        return ts / go if ts is not None and go else None

    for path in ("direct", "derp"):
        if not {"tsproc", "go"} <= summary.get(path, {}).keys():
            continue
        for key, kind, label, most in (
            ("setup_median_us", "setup", "connection set-up latency, median ≤ 2.5 x pure Go",
             2.5),
            ("setup_cpu_us", "setup", "CPU per connection set-up ≤ 3 x pure Go", 3.0),
            ("rr_median_us", "hop", "64 B round trip, median ≤ 1.9 x pure Go", 1.9),
            ("idle_conns_MB_per_1k", "idle", "1,000 idle connections ≤ 1.5 x pure Go", 1.5),
        ):
            r = ratio(path, key)
            if r is not None:
                add(path, kind, label, r, f"≤ {most} x", r <= most)
        for key, label in (("bulk1_MBps", "bulk 1 stream ≥ 0.9 x pure Go"),
                           ("bulk8_MBps", "bulk 8 streams ≥ 0.9 x pure Go")):
            r = ratio(path, key)
            if r is not None:
                add(path, "bulk", label, r, "≥ 0.9 x", r >= 0.9)
        hop = hop_overhead_us(summary, path)
        if hop is not None:
            add(path, "hop", "helper hop: round trip (tsproc - pure Go) - (trio TCP - Go TCP), "
                "median (µs)", hop, "≤ 100 µs", hop <= 100)
        peak = summary[path]["tsproc"].get("node_rss_load_MB")
        if peak is not None:
            add(path, "rss", "helper RSS peak during bulk (MB)", peak, "≤ 200 MB", peak <= 200)
        small, default = summary[path].get("small", {}), summary[path]["tsproc"]
        if small.get("node_rss_load_MB") is not None:
            add(path, "rss", "small memory profile: helper RSS peak during bulk (MB)",
                small["node_rss_load_MB"], "≤ 100 MB", small["node_rss_load_MB"] <= 100)
        if small.get("bulk8_MBps") and default.get("bulk8_MBps"):
            r = small["bulk8_MBps"] / default["bulk8_MBps"]
            add(path, "bulk", "small memory profile: bulk 8 streams ≥ 0.7 x the default's", r,
                "≥ 0.7 x", r >= 0.7)
    first = next((summary[p]["tsproc"] for p in ("direct", "derp")
                  if "tsproc" in summary.get(p, {})), None)
    if first is not None:
        path = "direct" if "tsproc" in summary.get("direct", {}) else "derp"
        if "startup_s" in first:
            add(path, "start-up", "start-up to running ≤ 1.5 s (s)", first["startup_s"],
                "≤ 1.5 s", first["startup_s"] <= 1.5)
        if "node_rss_idle_MB" in first:
            add(path, "rss", "helper RSS idle ≤ 60 MB (MB)", first["node_rss_idle_MB"],
                "≤ 60 MB", first["node_rss_idle_MB"] <= 60)
    return out


def previous_run(out_dir: Path, stem: str, mode: str) -> dict[str, Any] | None:
    """The newest earlier result of the same mode in *out_dir* (for the 'previous' column)."""
    for path in sorted(out_dir.glob("*.json"), reverse=True):
        if path.stem >= stem:
            continue
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if data.get("mode") == mode:
            return {"name": path.stem, "date": data.get("date", ""),
                    "ratios_to_go": data.get("ratios_to_go", {}),
                    "summary": data.get("summary", {}),
                    "goals": data.get("goals", [])}
    return None


def _fmt(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if digits == 0 and abs(value) >= 1:
        return f"{value:,.0f}"
    return f"{value:,.{max(digits, 2) if abs(value) < 1 else digits}f}"


def _path_note(lines: dict[str, dict[str, Any]]) -> str:
    notes = []
    for line in ("tsproc", "aio", "go"):
        if line in lines:
            direct = lines[line]["direct"]
            addrs = ", ".join(a for a in lines[line]["cur_addr"] if a) or "none"
            notes.append(f"{LINE_LABELS[line]}: {sum(direct)}/{len(direct)} trials direct "
                         f"(cur_addr {addrs})")
    return "; ".join(notes)


def _psi(machine: dict[str, Any]) -> str:
    start, end = machine.get("cpu_pressure"), machine.get("cpu_pressure_end")
    if start is None or end is None:
        return ""
    return f"; tasks waited for a CPU {start:.0f} % → {end:.0f} % of the time"


def markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    load = machine.get("loadavg", [0])[0], machine.get("loadavg_end", [0])[0]
    previous = results.get("previous")
    out = [
        f"## tsproc benchmarks, {results['date']} ({results['mode']} mode, "
        f"{results['repeats']} trial(s) per line and path, medians)",
        "",
        f"{machine.get('cpus')} CPUs (load {load[0]:.2f} → {load[1]:.2f}{_psi(machine)}), Linux "
        f"{machine.get('kernel')}, Python {machine.get('python')}, {machine.get('go')}, "
        f"{machine.get('helper')}, git {machine.get('git')}; {results['elapsed_s']:.0f} s.",
        "Every figure is also given as tsproc ÷ pure Go, both measured on the same path in the "
        "same run (↑: higher is better, ↓: lower is better)"
        + (f"; 'previous' is that ratio in the run before this one of the same mode "
           f"({previous['name']})." if previous else "."),
        "",
    ]
    summary = results["summary"]
    loop = summary.get("loopback", {})
    extra = [line for line in ("kernel", "trio-tcp", "hop") if line in loop]
    for path in ("direct", "derp"):
        lines = summary.get(path)
        if not lines:
            continue
        ratios = results["ratios_to_go"].get(path, {})
        before = previous["ratios_to_go"].get(path, {}) if previous else None
        out += [f"### {PATH_LABELS[path]}", "", _path_note(lines), ""]
        base = "base" in lines
        variants = [v for v in VARIANTS if v[0] in lines]
        head = ["metric", "tsproc", "pure Go", "tsproc ÷ Go"]
        if before is not None:
            head.append("previous")
        if base:
            head += ["baseline", "tsproc ÷ baseline"]
        for _, label, ratio_label, _ in variants:
            head += [label, ratio_label]
        head += [LINE_LABELS[e] for e in extra]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for metric in METRICS:
            values = [lines.get(line, {}).get(metric.key) for line in ("tsproc", "go")]
            values += [loop[e].get(metric.key) for e in extra]
            if all(v is None for v in values):
                continue
            arrow = "↑" if metric.higher_is_better else "↓"
            ratio = ratios.get(metric.key)

            cells = [f"{metric.label} ({metric.unit}) {arrow}"]
            cells += [_fmt(v, metric.digits) for v in values[:2]]
            cells.append(f"{ratio:.2f}" if ratio is not None else "-")
            if before is not None:
                was = before.get(metric.key)
                cells.append(f"{was:.2f}" if was is not None else "-")
            if base:
                b = results["ratios_to_base"].get(path, {}).get(metric.key)
                cells += [_fmt(lines["base"].get(metric.key), metric.digits),
                          f"{b:.2f}" if b is not None else "-"]
            for line, _, _, key in variants:
                r = results.get(key, {}).get(path, {}).get(metric.key)
                cells += [_fmt(lines[line].get(metric.key), metric.digits),
                          f"{r:.2f}" if r is not None else "-"]
            cells += [_fmt(v, metric.digits) for v in values[2:]]
            out.append("| " + " | ".join(cells) + " |")
        hop = hop_overhead_us(summary, path)
        if hop is not None:
            out += ["", f"What the helper hop adds to a round trip: (tsproc - pure Go) - "
                    f"(trio TCP - Go TCP) = **{hop:,.0f} µs** (medians)."]
        out.append("")
    if results["goals"]:
        was = {(g["path"], g["goal"]): g for g in previous["goals"]} if previous else {}
        out += ["### goals (issues 16 and 26)", "", "| path | goal | measured | previous | met |",
                "|---|---|---|---|---|"]
        for g in results["goals"]:
            met = {True: "yes", False: "**no**", None: "-"}[g["met"]]
            before_g = was.get((g["path"], g["goal"]))
            out.append(f"| {g['path']} | {g['goal']} | {g['value']} | "
                       f"{before_g['value'] if before_g else '-'} | {met} |")
        out.append("")
        missed = {g["kind"]: g["why"] for g in results["goals"] if g.get("why")}
        if missed:
            out += ["Why (details: benchmarks/README.md, Findings):", ""]
            out += [f"- **{kind}**: {why}" for kind, why in missed.items()]
            out.append("")
    out += FOOTNOTES
    out.append("")
    return "\n".join(out)


def readme_table(results: dict[str, Any], stem: Path) -> str:
    summary, ratios = results["summary"], results["ratios_to_go"]
    paths = [p for p in ("direct", "derp") if p in ratios]
    previous = results.get("previous")
    head = ["metric"]
    for path in paths:
        head += [f"tsproc ({path})", f"pure Go ({path})", "ratio"]
        if previous:
            head.append("previous ratio")
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = ["bulk1_MBps", "bulk8_MBps", "rr_median_us", "rr_cpu_us", "setup_median_us",
            "setup_per_s", "setup_cpu_us", "startup_s", "node_rss_idle_MB", "node_rss_load_MB",
            "idle_conns_MB_per_1k", "cpu_s_per_GiB"]
    readme_labels = {"node_rss_idle_MB": "helper RSS idle (pure Go: the process)"}
    for key in keys:
        metric = METRIC_BY_KEY[key]
        label = readme_labels.get(key, metric.label.rstrip("¹²³"))
        cells = [f"{label} ({metric.unit})"]
        for path in paths:
            ts = summary[path].get("tsproc", {}).get(key)
            go = summary[path].get("go", {}).get(key)
            ratio = ratios[path].get(key)
            cells += [_fmt(ts, metric.digits), _fmt(go, metric.digits),
                      f"{ratio:.2f}" if ratio is not None else "-"]
            if previous:
                was = previous["ratios_to_go"].get(path, {}).get(key)
                cells.append(f"{was:.2f}" if was is not None else "-")
        rows.append("| " + " | ".join(cells) + " |")
    before = (f" 'previous ratio': the run before it ({previous['name']})." if previous
              else "")
    return (f"Latest run ({results['date'][:10]}, {results['mode']} mode, "
            f"{results['machine'].get('cpus')} shared CPUs; details in "
            f"[benchmarks/results/{stem.name}.md](benchmarks/results/{stem.name}.md)):\n\n"
            + "\n".join(rows) + "\n" + (f"\n{before.strip()}\n" if before else ""))


def update_readme(readme: Path, results: dict[str, Any], stem: Path) -> None:
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"{readme} has no {README_START} … {README_END} markers")
    new = text[: start + len(README_START)] + "\n" + readme_table(results, stem) + text[end:]
    readme.write_text(new)


def chart(results: dict[str, Any], png: Path) -> bool:
    try:
        import matplotlib  # noqa: PLC0415 - optional: the `bench` extra

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    ratios = results["ratios_to_go"]
    keys = ["bulk1_MBps", "bulk8_MBps", "rr_median_us", "rr_p99_us", "setup_median_us",
            "startup_s", "node_rss_idle_MB", "idle_conns_MB_per_1k", "cpu_s_per_GiB"]
    paths = [p for p in ("direct", "derp") if p in ratios]
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6), width_ratios=[3, 2])
    height = 0.8 / max(1, len(paths))
    colors = {"direct": "#1f77b4", "derp": "#ff7f0e"}
    for i, path in enumerate(paths):
        ys = [k + i * height for k in range(len(keys))]
        xs = [ratios[path].get(key, math.nan) for key in keys]
        left.barh(ys, xs, height=height, label=PATH_LABELS[path], color=colors[path])
        for y, x in zip(ys, xs, strict=True):
            if not math.isnan(x):
                left.text(x, y, f" {x:.2f}", va="center", fontsize=8)
    left.axvline(1.0, color="black", linewidth=1)
    left.set_yticks([k + height * (len(paths) - 1) / 2 for k in range(len(keys))])
    left.set_yticklabels([
        f"{METRIC_BY_KEY[k].label.rstrip('¹²³')} "
        f"{'↑' if METRIC_BY_KEY[k].higher_is_better else '↓'}" for k in keys
    ])
    left.invert_yaxis()
    left.set_xlabel("tsproc ÷ pure Go (same path, same run)")
    left.set_title("tsproc relative to pure-Go tsnet")
    left.legend(loc="lower right")

    summary = results["summary"]
    groups: list[tuple[str, str]] = [(p, line) for p in paths for line in ("tsproc", "go")
                                     if line in summary.get(p, {})]
    groups += [("loopback", line) for line in ("kernel", "trio-tcp")
               if line in summary.get("loopback", {})]
    short = {"tsproc": "tsproc", "go": "pure Go", "kernel": "Go", "trio-tcp": "trio"}
    labels = [f"{short[line]}\n{'TCP' if p == 'loopback' else p}" for p, line in groups]
    for j, key in enumerate(("bulk1_MBps", "bulk8_MBps")):
        xs = [k + j * 0.4 for k in range(len(groups))]
        values = [summary[p][line].get(key, 0.0) for p, line in groups]
        right.bar(xs, values, width=0.4, label="1 stream" if j == 0 else "8 streams")
    right.set_xticks([k + 0.2 for k in range(len(groups))])
    right.set_xticklabels(labels, fontsize=8)
    right.set_ylabel("MB/s")
    right.set_yscale("log")
    right.set_title("bulk throughput (log scale)")
    right.legend()
    fig.suptitle(f"tsproc benchmarks, {results['date'][:10]} ({results['mode']} mode)")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return True


def write(results: dict[str, Any], stem: Path, *, chart_png: bool = True) -> list[Path]:
    written = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    written[0].write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    written[1].write_text(markdown(results))
    if chart_png:
        png = stem.with_suffix(".png")
        if chart(results, png):
            written.append(png)
        else:
            print("matplotlib is not installed: no chart (`pip install -e '.[bench]'`)")
    return written
