"""The benchmark harness (benchmarks/) in its smoke mode: tiny sizes, every workload, a few
seconds. It checks that the harness runs and reports; it asserts nothing about speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOBENCH = ROOT / "benchmarks" / "gobench" / "gobench"


def test_benchmarks_smoke_mode_writes_every_figure(tmp_path: Path) -> None:
    # The pure-Go lines need `make bench` to have built gobench; without it, the Python lines.
    lines = "tsproc,forward,small,trio-tcp,hop" + (",go,kernel" if GOBENCH.exists() else "")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--mode", "smoke", "--lines", lines,
         "--paths", "direct", "--out", str(tmp_path), "--name", "smoke", "--no-chart",
         "--logs", str(tmp_path / "logs")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "smoke.json").read_text())
    tsproc = results["summary"]["direct"]["tsproc"]
    for key in ("bulk1_MBps", "bulk8_MBps", "rr_median_us", "rr_p99_us", "setup_median_us",
                "startup_s", "node_rss_idle_MB", "host_rss_idle_MB", "cpu_s_per_GiB",
                "rr_cpu_us", "setup_cpu_us"):
        assert tsproc[key] > 0, key
    assert "idle_conns_MB_per_1k" in tsproc
    # The small-memory line: the same workloads with Node(memory_profile="small").
    small = results["summary"]["direct"]["small"]
    assert small["bulk8_MBps"] > 0 and small["node_rss_load_MB"] > 0
    assert results["ratios_small_to_tsproc"]["direct"]["bulk8_MBps"] > 0
    assert results["summary"]["loopback"]["trio-tcp"]["bulk1_MBps"] > 0
    # The forward line: the same workloads through node.forward()'s Unix socket.
    forward = results["summary"]["direct"]["forward"]
    assert forward["bulk1_MBps"] > 0 and forward["setup_median_us"] > 0
    assert results["ratios_forward_to_dial"]["direct"]["bulk1_MBps"] > 0
    # The helper hop line: round trips and set-ups through a helper with no tailnet.
    hop = results["summary"]["loopback"]["hop"]
    assert hop["rr_median_us"] > 0 and hop["setup_median_us"] > 0
    if GOBENCH.exists():
        assert results["ratios_to_go"]["direct"]["bulk1_MBps"] > 0
        assert {g["kind"] for g in results["goals"]} >= {"bulk", "hop", "setup", "start-up"}
    table = (tmp_path / "smoke.md").read_text()
    assert table.startswith("## tsproc benchmarks")
    assert "| 64 B round trip, median (µs) ↓ |" in table
    assert "forward ÷ dial" in table
    assert "small ÷ tsproc" in table
