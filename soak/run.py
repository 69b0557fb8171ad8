"""The soak run: a local tailnet, tsproc nodes in this process and a pure-Go tsnet peer, a
steady workload between them, a fault loop, and the accounting at the end."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import random
import shlex
import shutil
import subprocess
import tempfile
import threading
import traceback
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

import tsproc
import tsproc.testing
from tsproc._child.helper import find_helper, helper_environment

from . import faults
from .host import child_pids, fd_target, load_average, open_fds, rss, trio_tasks
from .peer import GoPeer
from .protocol import Ledger, Pool
from .report import table as result_table
from .state import POLICY, Config, FaultRecord, Soak, SoakNode, log
from .timeline import GO_NAME, SLOW_DIAL, Judged, Timeline
from .workers import WORKERS
from .workload import SERVICE_PORT, UDP_PORT, Client, Counters

ROOT = Path(__file__).resolve().parent.parent
GOPEER = ROOT / "soak" / "gopeer" / "gopeer"
RECOVERY_BOUND = 120.0
# How far the host's RSS may end above where it started (after the warm-up).
RSS_BOUND = 96 << 20

# The helper is started through this wrapper, which makes a node's next N starts exit at once
# (TSPROC_HELPER_FAULT=exit_at_start, the helper's own test switch) while the count in its file
# lasts: a crash loop for one node, without touching the others.
WRAPPER = """#!/bin/sh
f="$SOAK_CRASH_FILE"
n=$(cat "$f" 2>/dev/null || echo 0)
if [ "${n:-0}" -gt 0 ]; then
    echo $((n - 1)) > "$f"
    TSPROC_HELPER_FAULT=exit_at_start
    export TSPROC_HELPER_FAULT
fi
exec "$SOAK_REAL_HELPER" "$@"
"""


# -- the run --

async def run(cfg: Config) -> int:
    fds_before, children_before = open_fds(), child_pids()
    threads_before, tasks_before = threading.active_count(), trio_tasks()
    load_start = load_average()
    rng = random.Random(cfg.seed)
    log(f"seed {cfg.seed}, {cfg.minutes:g} minutes, load average {load_start}")
    if not GOPEER.exists():
        log(f"{GOPEER} is missing: build it with `make soak` (or `make test`)")
        return 2
    ledger, pool, counters = Ledger(), Pool(cfg.seed), Counters()
    results: dict[str, Any] = {}
    failures: list[str] = []
    workdir = _make_workdir()
    wrapper = workdir / "helper-wrapper.sh"
    real_helper = str(find_helper())
    started_at = trio.current_time()
    rss_start = 0
    soak: Soak | None = None
    try:
        async with tsproc.testing.local_tailnet() as tailnet, AsyncExitStack() as stack:
            nodes = []
            for i in range(cfg.nodes):
                name = f"soak-{chr(ord('a') + i)}"
                crash_file = workdir / f"{name}.crash"
                node = tailnet.node(name, restart=POLICY, helper_path=wrapper, helper_env={
                    "SOAK_CRASH_FILE": str(crash_file), "SOAK_REAL_HELPER": real_helper})
                sn = SoakNode(name, node, crash_file)
                await stack.enter_async_context(node)
                sn.ips = node.tailscale_ips
                nodes.append(sn)
                log(f"{name} up: {', '.join(map(str, sn.ips))}")
            client_ids = itertools.count(1)
            timeline = Timeline()
            soak = Soak(cfg, tailnet, ledger, pool, counters,
                        Client(ledger, pool, counters, lambda: next(client_ids), timeline),
                        nodes, tailnet._process.pid, random.Random(rng.random()), timeline)
            soak._ids = client_ids
            results = await _run_with_nodes(soak, stack, rng)
            rss_start = results.pop("rss_start")
    except* Exception as group:
        for exc in group.exceptions:
            failures.append(f"the soak itself failed: {type(exc).__name__}: {exc}")
            log(f"error: {exc!r}")
            if cfg.verbose:
                traceback.print_exception(exc)
    minutes = (trio.current_time() - started_at) / 60
    if soak is not None:
        failures += soak.failures

    # Leaks: everything the soak started is closed now.
    leaks: Counter[str] = Counter()
    with trio.move_on_after(15):  # trio's idle worker threads go after a few seconds
        while threading.active_count() > threads_before:
            await trio.sleep(0.2)
    leaks["threads"] = max(0, threading.active_count() - threads_before)
    leaked_fds = open_fds() - fds_before
    leaks["fds"] = len(leaked_fds)
    leaks["processes"] = len(child_pids() - children_before)
    leaks["trio tasks"] = max(0, trio_tasks() - tasks_before)
    leaks.update(results.get("helper_leaks", {}))
    for what, n in leaks.items():
        if n:
            failures.append(f"leak: {n} {what}")
    if leaked_fds:
        failures.append("leaked fds: " + ", ".join(fd_target(fd) for fd in sorted(leaked_fds)))
    rss_end = rss()
    if rss_start and rss_end - rss_start > RSS_BOUND:
        failures.append(f"host RSS grew by {(rss_end - rss_start) >> 20} MiB "
                        f"(bound {RSS_BOUND >> 20} MiB)")
    reconciled = ledger.reconcile()
    if reconciled.silently_wrong:
        failures.append(f"{reconciled.silently_wrong} silently wrong transfers: "
                        + "; ".join(reconciled.wrong_details[:10]))
    if reconciled.unexpected:
        failures.append(f"{reconciled.unexpected} transfers ended with an exception tsproc "
                        "should not raise: " + "; ".join(reconciled.unexpected_details[:10]))
    if counters.udp_corrupt:
        failures.append(f"{counters.udp_corrupt} corrupt UDP datagrams")
    judged = soak.timeline.judge() if soak is not None else Judged()
    if judged.unexcused:
        failures.append(f"{len(judged.unexcused)} dials took longer than {SLOW_DIAL:g} s with "
                        "no fault on either end: " + "; ".join(judged.unexcused[:10]))
    if judged.go_timeouts_died:
        failures.append(f"{len(judged.go_timeouts_died)} connections of the Go peer ran into "
                        "its deadline after their tsproc end's helper died (the new helper "
                        "must reset them): " + "; ".join(judged.go_timeouts_died[:10]))
    table = result_table(cfg, minutes, soak, reconciled, counters, leaks, rss_start, rss_end,
                   load_start, load_average(), results, judged)
    print(table, flush=True)
    if soak is not None:
        for f in soak.faults:
            if f.failed or cfg.verbose:
                log(f"fault {f.kind} on {f.node} at {f.at:.0f}s: {f.note} {f.failed}")
    for note in counters.notes:
        log(f"note: {note}")
    if cfg.verbose:
        for what in judged.excused_details:
            log(f"slow dial during a fault on one of its ends: {what}")
        for what in judged.go_timeouts_other:
            log(f"Go peer deadline hit, no helper death at its tsproc end: {what}")
    if cfg.json_path is not None:
        cfg.json_path.write_text(json.dumps({
            "seed": cfg.seed, "minutes": minutes, "table": table, "failures": failures,
            "faults": [f.__dict__ for f in soak.faults] if soak else [],
            "error_kinds": dict(reconciled.error_kinds), "notes": counters.notes,
            "error_samples": reconciled.error_samples,
            "slow_dials_unexcused": judged.unexcused,
            "slow_dials_excused": judged.excused_details,
            "go_timeouts_helper_died": judged.go_timeouts_died,
            "go_timeouts_other": judged.go_timeouts_other,
        }, indent=1, default=str))
    for failure in failures:
        log(f"FAIL: {failure}")
    shutil.rmtree(workdir, ignore_errors=True)
    log("PASS" if not failures else f"{len(failures)} failures")
    return 1 if failures else 0


def _make_workdir() -> Path:
    workdir = Path(tempfile.mkdtemp(prefix="tsproc-soak-"))
    wrapper = workdir / "helper-wrapper.sh"
    wrapper.write_text(WRAPPER)
    wrapper.chmod(0o700)
    return workdir


async def _run_with_nodes(soak: Soak, stack: AsyncExitStack, rng: random.Random) -> dict[str, Any]:
    cfg = soak.cfg
    results: dict[str, Any] = {}
    env = helper_environment(
        {"TS_DISABLE_PORTMAPPER": "1", "TS_DEBUG_OMIT_LOCAL_ADDRS": "1"})
    go_log = stack.enter_context(tempfile.TemporaryFile())  # noqa: SIM115 - the stack closes it
    args = [str(GOPEER), "-control", soak.tailnet.control_url, "-hostname", GO_NAME,
            "-port", str(SERVICE_PORT), "-udp-port", str(UDP_PORT),
            # IPs, not names: they must stay the same through restarts, and this checks it.
            "-targets", ",".join(str(n.ips[0]) for n in soak.nodes), "-workers", "2",
            "-seed", str(cfg.seed)]
    if cfg.verbose:
        log("go peer: " + shlex.join(args))
    process = await trio.lowlevel.open_process(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=go_log, env=env,
        start_new_session=True)
    gopeer = GoPeer(process, soak.ledger, soak.timeline)

    async def stop_gopeer() -> None:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    await pipe.aclose()

    stack.push_async_callback(stop_gopeer)
    async with trio.open_nursery() as outer:
        outer.start_soon(gopeer.read)
        for sn in soak.nodes:
            outer.start_soon(sn.watch_events, sn.node.events(), soak.timeline)
        with trio.fail_after(120):
            await gopeer.ready.wait()
        if gopeer.error:
            raise RuntimeError(gopeer.error)
        log(f"{GO_NAME} up: {', '.join(gopeer.ips)}")
        async with trio.open_nursery() as servers:
            for sn in soak.nodes:
                await sn.open_service_listener()
                servers.start_soon(sn.serve, soak)
                servers.start_soon(sn.udp_echo)
            await _warm_up(soak)
            soak.timeline.ip_names = {str(ip): sn.name for sn in soak.nodes for ip in sn.ips}
            soak.timeline.ip_names.update((ip, GO_NAME) for ip in gopeer.ips)
            soak.timeline.start()  # dials are judged from here on
            await gopeer.send("go")
            listeners_base = {sn.name: (await sn.node.status()).helper_listeners
                              for sn in soak.nodes}
            results["rss_start"] = rss()
            stop = trio.Event()
            end_at = trio.current_time() + cfg.minutes * 60
            with trio.move_on_after(cfg.minutes * 60 + 180) as overall:
                async with trio.open_nursery() as workers:
                    workers.start_soon(_fault_loop, soak, stop, end_at)
                    workers.start_soon(_progress, soak, stop, results)
                    for i, worker in enumerate(WORKERS):
                        workers.start_soon(worker, soak, stop, random.Random(rng.random()), i)
                    await trio.sleep_until(end_at)
                    stop.set()
                    log("time is up: draining")
            if overall.cancelled_caught:
                soak.failures.append("workers did not stop within 180 s of the end: stuck")
            await gopeer.send("stop")
            with trio.move_on_after(120):
                await gopeer.done.wait()
            if not gopeer.done.is_set():
                soak.failures.append("the Go peer did not finish within 120 s")
            if gopeer.error:
                soak.failures.append(f"Go peer: {gopeer.error}")
            soak.counters.connections += gopeer.dialed
            with trio.move_on_after(60):
                while any(sn.handlers for sn in soak.nodes):
                    await trio.sleep(0.1)
            busy = {sn.name: sn.handlers for sn in soak.nodes if sn.handlers}
            if busy:
                soak.failures.append(f"server handlers still running at the end: {busy}")
            # Every node running, with its original IPs, and serving.
            recovery = await _wait_recovered(soak, trio.current_time())
            if recovery is None:
                soak.failures.append("not every node was running and serving at the end")
            results["helper_leaks"] = await _helper_leaks(soak, listeners_base)
            servers.cancel_scope.cancel()
        outer.cancel_scope.cancel()
    for sn in soak.nodes:
        if sn.crash_loop_failure:
            soak.failures.append(f"{sn.name} gave up: {sn.crash_loop_failure}")
    return results


async def _progress(soak: Soak, stop: trio.Event, results: dict[str, Any]) -> None:
    """The host's RSS every 10 s (its peak goes in the table) and a line a minute."""
    started = trio.current_time()
    results["rss_peak"] = rss()
    for tick in itertools.count(1):
        with trio.move_on_after(10):
            await stop.wait()
        if stop.is_set():
            return
        results["rss_peak"] = max(results["rss_peak"], rss())
        if tick % 6 == 0:
            r = soak.ledger.reconcile(final=False)
            log(f"{(trio.current_time() - started) / 60:.0f} min: {r.transfers} transfers, "
                f"{r.completed} completed, {r.errors} errors, {r.silently_wrong} silently "
                f"wrong, {len(soak.faults)} faults, {len(soak.failures)} failures, RSS "
                f"{rss() >> 20} MiB, load {load_average()}")


async def _warm_up(soak: Soak) -> None:
    """Every tsproc node reaches every other node and the Go peer."""
    with trio.fail_after(180):
        for sn in soak.nodes:
            for target in soak.peer_names(sn):
                while await soak.client.bulk(sn.node, target, 1024, 1024) != "complete":
                    await trio.sleep(0.5)
    log("warm-up done: every node reaches every other")


async def _wait_recovered(soak: Soak, since: float) -> float | None:
    """Seconds from *since* until every node is running with its original IPs and a probe
    transfer to and from each one completes; None if not within RECOVERY_BOUND."""
    with trio.move_on_at(since + RECOVERY_BOUND):
        for i, sn in enumerate(soak.nodes):
            while sn.node.state is not tsproc.NodeState.RUNNING:
                if sn.node.state in (tsproc.NodeState.FAILED, tsproc.NodeState.CLOSED):
                    return None
                await trio.sleep(0.05)
            if sn.node.tailscale_ips != sn.ips:
                soak.failures.append(f"{sn.name} came back with other IPs: "
                                     f"{sn.node.tailscale_ips} instead of {sn.ips}")
            nxt = soak.nodes[(i + 1) % len(soak.nodes)]
            for src, dst in ((sn, nxt.name), (nxt, sn.name)):
                # 10 s a probe, then a new one: a dial between two running nodes now and then
                # never connects (docs/reliability.md); it must not count as 45 s of recovery.
                while (outcome := await soak.client.bulk(
                        src.node, dst, 512, 512,
                        deadline=trio.current_time() + 10)) != "complete":
                    if soak.cfg.verbose:
                        log(f"recovery probe {src.name}->{dst}: {outcome}, "
                            f"{trio.current_time() - since:.1f} s after the fault began")
                    await trio.sleep(0.1)
        return trio.current_time() - since
    return None


async def _helper_leaks(soak: Soak, listeners_base: dict[str, int]) -> Counter[str]:
    """Connections and listeners the helpers still hold once all traffic has ended."""
    leaks: Counter[str] = Counter()
    with trio.move_on_after(30):
        while True:
            statuses = {sn.name: await sn.node.status() for sn in soak.nodes}
            conns = sum(s.helper_conns for s in statuses.values())
            extra = sum(max(0, s.helper_listeners - listeners_base[name])
                        for name, s in statuses.items())
            if conns == 0 and extra == 0:
                break
            await trio.sleep(0.5)
    leaks["helper connections"] = conns
    leaks["helper listeners"] = extra
    for sn in soak.nodes:
        status = statuses[sn.name]
        # The node's own account must agree with what the soak saw happen to it.
        if status.helper_restarts != len(sn.restarts):
            soak.failures.append(f"{sn.name}: status says {status.helper_restarts} restarts, "
                                 f"its events said {len(sn.restarts)}")
        if status.backend_state != "Running" or set(status.tailscale_ips) != set(sn.ips):
            soak.failures.append(f"{sn.name}: at the end {status.backend_state} with "
                                 f"{status.tailscale_ips}, not Running with {sn.ips}")
        if status.helper_pid != sn.node.helper_pid:
            soak.failures.append(f"{sn.name}: status names helper {status.helper_pid}, the "
                                 f"node {sn.node.helper_pid}")
    return leaks


async def _fault_loop(soak: Soak, stop: trio.Event, end_at: float) -> None:
    rng = soak.fault_rng
    kinds = faults.schedule(rng, soak.cfg.kinds)
    kind = next(kinds)
    while True:
        with trio.move_on_after(rng.uniform(*soak.cfg.fault_gap)):
            await stop.wait()
        # A fault must have time to be injected and recovered from before the end.
        if stop.is_set() or trio.current_time() > end_at - 15:
            return
        now = trio.current_time()
        candidates = [sn for sn in soak.nodes if sn.node.state is tsproc.NodeState.RUNNING]
        if kind in faults.ENDS_HELPER:
            # The supervisor counts a helper that dies within stable_after of its start as one
            # more failure in a row, and gives up at max_attempts (a crash loop). A fault that
            # ends a helper therefore hits only one that has run longer: each then starts the
            # count from nought, and the worst, crash_loop, uses 4 of the 6. Without this, three
            # such faults in a row on one node (crash_loop, sigstop 8 s later, sigkill 6 s after
            # that: seed 768832464, minute 4) made 6 in a row, and the node rightly gave up.
            candidates = [sn for sn in candidates
                          if now - sn.last_restart > soak.policy.stable_after + 2]
        if not candidates:
            continue
        sn = rng.choice(candidates)
        record = FaultRecord(kind, sn.name, now - (end_at - soak.cfg.minutes * 60), None, "")
        soak.faults.append(record)
        try:
            record.note = await faults.FAULTS[kind](soak, sn)
        except faults.FaultFailed as exc:
            record.failed = str(exc)
            soak.failures.append(f"fault {kind}: {exc}")
        except Exception as exc:  # the fault's own machinery failed: say so, keep going
            record.failed = f"{type(exc).__name__}: {exc}"
            soak.failures.append(f"fault {kind} on {sn.name} raised {record.failed}")
        took = trio.current_time() - now
        record.recovery = await _wait_recovered(soak, now)
        soak.timeline.fault(kind, sn.name, now, record.recovery)
        if record.recovery is None:
            gave_up = "; ".join(f"{n.name} gave up: {n.crash_loop_failure.splitlines()[0]}"
                                for n in soak.nodes if n.crash_loop_failure)
            soak.failures.append(f"fault {kind} on {sn.name}: not recovered within "
                                 f"{RECOVERY_BOUND:g} s" + (f" ({gave_up})" if gave_up else ""))
            log(f"FAIL: {soak.failures[-1]}; no more faults")
            return
        if soak.cfg.verbose:
            log(f"fault {kind}: {record.note}; recovered in {record.recovery:.1f} s (the "
                f"fault itself took {took:.1f} s)")
        kind = next(kinds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__)
    parser.add_argument("--minutes", type=float,
                        default=float(os.environ.get("SOAK_MINUTES", "5")))
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed (default: from the clock; printed)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--faults", default=",".join(faults.KINDS),
                        help="fault kinds to inject, comma-separated (default: all)")
    parser.add_argument("--log", type=Path, default=None, help="tsproc's and helpers' log")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    if not 0 < args.minutes <= 24 * 60 or not 2 <= args.nodes <= 8:
        parser.error("--minutes must be in (0, 1440] and --nodes in [2, 8]")
    kinds = tuple(k for k in args.faults.split(",") if k)
    if unknown := set(kinds) - set(faults.KINDS):
        parser.error(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(faults.KINDS)}")
    cfg = Config(minutes=args.minutes, seed=seed, nodes=args.nodes, json_path=args.json,
                 verbose=args.verbose, kinds=kinds)
    # Helpers' log lines (a memory-starved helper's dying goroutine dump is thousands) go to
    # --log, not to the terminal.
    handler: logging.Handler = (logging.FileHandler(args.log) if args.log
                                else logging.NullHandler())
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger("tsproc").addHandler(handler)
    # With --log, debug too: what reset_peers was given after a death, say (docs/reliability.md).
    logging.getLogger("tsproc").setLevel(logging.DEBUG if args.log else logging.INFO)
    logging.getLogger("tsproc").propagate = False
    return trio.run(run, cfg)
