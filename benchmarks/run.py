"""Run the benchmark lines on a local tailnet and write the results.

    python -m benchmarks [--mode quick|full|smoke] [--repeats N] [--lines ...] [--paths ...]

Every trial is one line on one path: a server process and a client process (see peer.py and
gobench/main.go) on a local tailnet (``tsproc.testing.local_tailnet()``), or on loopback TCP.
The runner reads /proc for every process of the trial at the client's phase marks (memory,
CPU) and every 50 ms in between (peak memory), so that each line is measured the same way.
Trials of different lines alternate, and everything is reported as a ratio to the pure-Go
line of the same run: the machine is shared and its speed drifts.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from tsproc.testing import local_tailnet

from . import report
from .workloads import MODES, Workload

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_GOBENCH = HERE / "gobench" / "gobench"
SAMPLE_INTERVAL = 0.05
TRIAL_TIMEOUT = 300.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True)
class Line:
    name: str
    label: str
    language: str  # "python" (peer.py) or "go" (gobench)
    net: str  # the --net value
    tailnet: bool  # runs on a path (direct/derp) rather than on loopback TCP


LINES: dict[str, Line] = {
    "tsproc": Line("tsproc", "tsproc (trio)", "python", "tsproc", True),
    "go": Line("go", "pure Go (tsnet)", "go", "tsnet", True),
    "kernel": Line("kernel", "kernel (Go, loopback TCP)", "go", "tcp", False),
    "trio-tcp": Line("trio-tcp", "trio, loopback TCP", "python", "tcp", False),
    # One helper and no tailnet: what the Python ⇄ helper boundary costs (peer.py, --net hop).
    "hop": Line("hop", "helper hop (no tailnet)", "python", "hop", False),
    # The client's connections go through node.forward()'s Unix socket (its bytes never
    # through Python on the client side); the server is the tsproc line's.
    "forward": Line("forward", "tsproc forward (Unix socket)", "python", "forward", True),
    # --base DIR: tsproc from another source tree (its Python package and its helper), for
    # before/after measurements in one run.
    "base": Line("base", "tsproc, baseline tree", "python", "tsproc", True),
    # The same tsproc with Node(memory_profile="small"): what the small-machine profile costs
    # and saves, beside the default in the same run.
    "small": Line("small", "tsproc, memory_profile='small'", "python", "tsproc", True),
}


def read_proc(pid: int) -> tuple[float, float] | None:
    """(RSS in MB, CPU seconds) of a live process, from /proc/<pid>/statm and stat."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            rss_pages = int(f.read().split()[1])
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError, ValueError):
        return None
    # Fields after "(comm)": state is [0], utime [11], stime [12].
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return rss_pages * PAGE_KB / 1024, cpu


@dataclass
class Trial:
    line: Line
    path: str
    repeat: int
    pids: dict[str, int] = field(default_factory=dict)  # role -> pid
    marks: dict[str, dict[str, Any]] = field(default_factory=dict)
    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    server_startup_s: float = 0.0
    wall_s: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.line.name}-{self.path}-{self.repeat}"

    def snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = {"t": time.monotonic(), "rss_mb": {}, "cpu_s": {}}
        for role, pid in self.pids.items():
            got = read_proc(pid)
            if got is not None:
                snap["rss_mb"][role], snap["cpu_s"][role] = got
        return snap


class LineReader:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buf = b""

    async def next_event(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                raise EOFError("the process closed its stdout")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        event: dict[str, Any] = json.loads(line)
        if event.get("event") == "error":
            raise RuntimeError(f"benchmark process failed: {event.get('error')}")
        return event


class Runner:
    def __init__(self, args: argparse.Namespace, workload: Workload, control_url: str,
                 log_dir: Path) -> None:
        self.args = args
        self.workload = workload
        self.control_url = control_url
        self.log_dir = log_dir

    def command(self, line: Line, role: str, hostname: str, trial: Trial,
                server: Mapping[str, Any] | None) -> list[str]:
        if line.language == "python":
            cmd = [sys.executable, "-m", "benchmarks.peer", role, "--net", line.net,
                   "--hostname", hostname, "--control", self.control_url]
            if line.name == "small":
                cmd += ["--memory-profile", "small"]
        else:
            cmd = [str(self.args.gobench), role, "-net", line.net, "-hostname", hostname,
                   "-control", self.control_url]
            if self.args.pprof:
                cmd += ["-cpuprofile", str(Path(self.args.pprof) / f"{trial.name}-{role}.pprof")]
        if server is not None:
            cfg = self.workload.to_json()
            cfg["want_direct"] = cfg["want_direct"] and trial.path == "direct"
            dash = "--" if line.language == "python" else "-"
            cmd += [f"{dash}target", str(server["target"]),
                    f"{dash}bulk-port", str(server["bulk_port"]),
                    f"{dash}echo-port", str(server["echo_port"]),
                    f"{dash}config", json.dumps(cfg)]
        return cmd

    def root(self, line: Line) -> Path:
        """The source tree a line's Python processes run from."""
        return Path(self.args.base).resolve() if line.name == "base" else ROOT

    def environment(self, trial: Trial, role: str) -> dict[str, str]:
        env = dict(os.environ)
        # What tsproc sets for its helpers on a loopback control server; the Go line needs the
        # same to be on the same footing.
        env.update(TS_DISABLE_PORTMAPPER="1", TS_DEBUG_OMIT_LOCAL_ADDRS="1")
        env.pop("TS_DEBUG_ALWAYS_USE_DERP", None)
        if trial.path == "derp":
            env["TS_DEBUG_ALWAYS_USE_DERP"] = "1"
        root = self.root(trial.line)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        if trial.line.name == "base":
            env["TSPROC_HELPER"] = str(root / "tsproc" / "_bin" / "tsproc-helper")
        for item in self.args.env if trial.line.name != "base" else self.args.base_env:
            key, _, value = item.partition("=")
            env[key] = value
        if self.args.pprof and trial.line.language == "python" and trial.line.net != "tcp":
            profile = Path(self.args.pprof) / f"{trial.name}-{role}-helper-%p.pprof"
            env["TSPROC_HELPER_PPROF"] = str(profile)
        if self.args.heapprof and trial.line.language == "python" and trial.line.net != "tcp":
            profile = Path(self.args.heapprof) / f"{trial.name}-{role}-helper-%p.heap"
            env["TSPROC_HELPER_HEAPPROF"] = str(profile)
        return env

    async def run_trial(self, trial: Trial) -> None:
        t_start = time.monotonic()
        async with trio.open_nursery() as nursery:
            server = await self._spawn(trial, "server", f"{trial.name}-srv", None)
            client: trio.Process | None = None
            server_reader = LineReader(server.stdout)  # type: ignore[arg-type]
            try:
                with trio.fail_after(120):
                    ready = await server_reader.next_event()
                trial.pids["server_host"] = server.pid
                if ready.get("helper_pid"):
                    trial.pids["server_helper"] = int(ready["helper_pid"])
                trial.server_startup_s = float(ready.get("startup_s", 0.0))
                nursery.start_soon(self._sample, trial)
                client = await self._spawn(trial, "client", f"{trial.name}-cli", ready)
                reader = LineReader(client.stdout)  # type: ignore[arg-type]
                with trio.fail_after(TRIAL_TIMEOUT):
                    while True:
                        event = await reader.next_event()
                        kind = event.get("event")
                        if kind == "hello":
                            trial.pids["client_host"] = client.pid
                            if event.get("helper_pid"):
                                trial.pids["client_helper"] = int(event["helper_pid"])
                        elif kind == "mark":
                            trial.marks[event["name"]] = trial.snapshot()
                            await client.stdin.send_all(b"go\n")  # type: ignore[union-attr]
                        elif kind == "result":
                            trial.result = event
                            # The round-trip marks enclose the warm-up exchanges too.
                            trial.result.setdefault("rr_warmup", self.workload.rr_warmup)
                            break
                    await client.stdin.aclose()  # type: ignore[union-attr]
                with trio.move_on_after(30):
                    await client.wait()
            finally:
                with trio.CancelScope(shield=True):
                    await _stop(server, "server")
                    if client is not None:
                        await _stop(client, "client")
                nursery.cancel_scope.cancel()
        trial.wall_s = time.monotonic() - t_start

    async def _spawn(self, trial: Trial, role: str, hostname: str,
                     server: Mapping[str, Any] | None) -> trio.Process:
        log = open(self.log_dir / f"{trial.name}-{role}.log", "wb")  # noqa: SIM115, ASYNC230
        try:
            process = await trio.lowlevel.open_process(
                self.command(trial.line, role, hostname, trial, server),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                env=self.environment(trial, role), cwd=self.root(trial.line),
            )
        finally:
            log.close()
        if self.args.pyspy and trial.line.language == "python":
            # py-spy (the bench extra) samples the host until it exits; raw (collapsed
            # stacks) output, for flame graphs or a grep.
            out = Path(self.args.pyspy) / f"{trial.name}-{role}.txt"
            subprocess.Popen(  # noqa: ASYNC220 - detached on purpose; it ends with its target
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                 str(process.pid), "--format", "raw", "--rate", "250", "--output", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        return process

    async def _sample(self, trial: Trial) -> None:
        while True:
            snap = trial.snapshot()
            trial.samples.append((snap["t"], snap["rss_mb"]))
            await trio.sleep(SAMPLE_INTERVAL)


async def _stop(process: trio.Process, what: str) -> None:
    if process.stdin is not None:
        await process.stdin.aclose()
    with trio.move_on_after(20):
        await process.wait()
    if process.returncode is None:
        print(f"  {what} did not exit: killing it", file=sys.stderr)
        process.kill()
        await process.wait()


def cpu_pressure() -> float | None:
    """The share of the last minute some task waited for a CPU (Linux PSI), in percent."""
    try:
        with open("/proc/pressure/cpu") as f:
            return float(f.readline().split()[2].split("=")[1])
    except (OSError, IndexError, ValueError):
        return None


def machine_info() -> dict[str, Any]:
    def run(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False,
                                  cwd=ROOT, timeout=20).stdout.strip()
        except OSError:
            return ""

    return {
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "cpu_pressure": cpu_pressure(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "go": run("go", "version"),
        "git": run("git", "rev-parse", "--short", "HEAD")
        + (" (modified)" if run("git", "status", "--porcelain", "--untracked-files=no") else ""),
        "helper": run(str(ROOT / "tsproc" / "_bin" / "tsproc-helper"), "version"),
    }


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    workload = MODES[args.mode]
    if args.phases:
        workload = dataclasses.replace(workload, phases=tuple(args.phases.split(",")))
    lines = [LINES[name] for name in args.lines.split(",")]
    if args.base and LINES["base"] not in lines:
        lines.insert(1, LINES["base"])
    paths = args.paths.split(",")
    repeats = args.repeats if args.repeats is not None else (3 if args.mode == "full" else 1)
    plan: list[tuple[Line, str]] = []
    for path in paths:
        plan += [(line, path) for line in lines if line.tailnet]
    plan += [(line, "loopback") for line in lines if not line.tailnet]
    info = machine_info()
    started = time.monotonic()
    trials: list[Trial] = []
    log_dir = Path(args.logs)
    print(f"benchmarks: mode {args.mode}, {repeats} repeat(s), {len(plan)} trials each; "
          f"process logs in {log_dir}", file=sys.stderr)
    async with local_tailnet() as tailnet:
        runner = Runner(args, workload, tailnet.control_url, log_dir)
        for repeat in range(repeats):
            # Alternate the order so that no line always runs first (or last) on a drifting
            # machine.
            order = plan if repeat % 2 == 0 else list(reversed(plan))
            for line, path in order:
                trial = Trial(line, path, repeat)
                print(f"  {trial.name} ...", end="", file=sys.stderr, flush=True)
                await runner.run_trial(trial)
                trials.append(trial)
                brief = report.summarize_trial(trial)
                print(f" {trial.wall_s:.1f} s: {report.one_line(brief)}", file=sys.stderr)
    info["loadavg_end"] = os.getloadavg()
    info["cpu_pressure_end"] = cpu_pressure()
    return report.build(
        trials=trials, mode=args.mode, workload=workload.to_json(), machine=info,
        repeats=repeats, elapsed=time.monotonic() - started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--repeats", type=int, default=None,
                        help="trials per line and path (default: 1, or 3 in full mode)")
    parser.add_argument("--lines", default="tsproc,forward,small,go,kernel,trio-tcp,hop",
                        help=f"comma-separated, from {','.join(LINES)}")
    parser.add_argument("--paths", default="direct,derp", help="direct, derp or both")
    parser.add_argument("--phases", default=None,
                        help="comma-separated workloads to run (default: all), e.g. setup")
    parser.add_argument("--out", default=str(HERE / "results"),
                        help="directory for <date>.json, .md and .png")
    parser.add_argument("--name", default=None,
                        help="file name stem (default: the UTC date and time)")
    parser.add_argument("--gobench", default=str(DEFAULT_GOBENCH), help="gobench binary")
    parser.add_argument("--logs", default=None, help="directory for the processes' stderr")
    parser.add_argument("--pprof", default=None,
                        help="directory for CPU profiles of the Go processes and the helpers")
    parser.add_argument("--pyspy", default=None,
                        help="directory for py-spy profiles (raw) of the Python processes")
    parser.add_argument("--heapprof", default=None,
                        help="directory for the helpers' heap profiles at their largest heap")
    parser.add_argument("--base", default=None,
                        help="another tsproc source tree (with its helper built) to run as the "
                        "'base' line beside tsproc: before/after in one run")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment for the tsproc line only (its hosts and helpers)")
    parser.add_argument("--base-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment for the base line only")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG")
    parser.add_argument("--update-readme", action="store_true",
                        help="put the table into README.md between the bench markers")
    args = parser.parse_args(argv)
    if any(LINES[n].language == "go" for n in args.lines.split(",")) and not Path(
            args.gobench).exists():
        parser.error(f"no gobench binary at {args.gobench}: run `make bench` (it builds it)")
    args.logs = args.logs or tempfile.mkdtemp(prefix="tsproc-bench-")
    Path(args.logs).mkdir(parents=True, exist_ok=True)
    for directory in (args.pprof, args.heapprof, args.pyspy):
        if directory:
            Path(directory).mkdir(parents=True, exist_ok=True)
    results = trio.run(run_all, args)
    stem = args.name or dt.datetime.now(dt.UTC).strftime("%Y-%m-%d-%H%M%S")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results["previous"] = report.previous_run(out, stem, results["mode"])
    written = report.write(results, out / stem, chart_png=not args.no_chart)
    if args.update_readme:
        report.update_readme(ROOT / "README.md", results, out / stem)
    print(report.markdown(results))
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
