"""The wheel's platform tag comes from the build hook's table, never from hatchling's guess.

Fast checks of hatch_build.py's target selection (the six wheels themselves are built and checked
by `make wheels`), and of the helper `make` built against the header parser wheels/ uses.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tsproc._child.helper import find_helper

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


hatch_build = _load("hatch_build", ROOT / "hatch_build.py")
binfmt = _load("binfmt", ROOT / "wheels" / "binfmt.py")

SIX = [
    "manylinux_2_17_x86_64.manylinux2014_x86_64",
    "manylinux_2_17_aarch64.manylinux2014_aarch64",
    "musllinux_1_2_x86_64",
    "musllinux_1_2_aarch64",
    "macosx_13_0_x86_64",
    "macosx_13_0_arm64",
]


def test_WHEEL_PLATFORMS_are_the_six_published_tags() -> None:
    assert list(hatch_build.WHEEL_PLATFORMS) == SIX


@pytest.mark.parametrize("tag", SIX)
def test_wheel_platform_round_trips_every_tag(tag: str) -> None:
    goos, goarch = hatch_build.WHEEL_PLATFORMS[tag]
    assert hatch_build.wheel_platform(goos, goarch, musl=tag.startswith("musl")) == tag


@pytest.mark.parametrize("tag", SIX)
def test_select_target_from_TSPROC_WHEEL_PLATFORM(tag: str) -> None:
    target = hatch_build.select_target({"TSPROC_WHEEL_PLATFORM": tag})
    assert (target.goos, target.goarch) == hatch_build.WHEEL_PLATFORMS[tag]
    assert target.wheel_tag == f"py3-none-{tag}"


def test_select_target_from_GOOS_GOARCH_cross_build_defaults_to_manylinux_or_macos() -> None:
    select = hatch_build.select_target
    assert select({"GOOS": "darwin", "GOARCH": "arm64"}).platform_tag == "macosx_13_0_arm64"
    assert select({"GOOS": "darwin", "GOARCH": "amd64"}).platform_tag == "macosx_13_0_x86_64"
    if not hatch_build.host_is_musl():
        assert select({"GOOS": "linux", "GOARCH": "arm64"}).platform_tag == SIX[1]


def test_select_target_defaults_to_this_machine() -> None:
    target = hatch_build.select_target({})
    assert target.platform_tag in SIX
    assert (target.goos, target.goarch) == (hatch_build.host_goos(), hatch_build.host_goarch())


def test_host_goarch_honours_PYTHON_HOST_PLATFORM(monkeypatch: pytest.MonkeyPatch) -> None:
    # cibuildwheel sets it when it builds for another macOS architecture.
    monkeypatch.setenv("_PYTHON_HOST_PLATFORM", "macosx-11.0-arm64")
    assert hatch_build.host_goarch() == "arm64"
    monkeypatch.setenv("_PYTHON_HOST_PLATFORM", "macosx-10.9-x86_64")
    assert hatch_build.host_goarch() == "amd64"


@pytest.mark.parametrize(
    "env",
    [
        {"TSPROC_WHEEL_PLATFORM": "linux_x86_64"},
        {"TSPROC_WHEEL_PLATFORM": "musllinux_1_2_aarch64", "GOARCH": "amd64"},
        {"TSPROC_WHEEL_PLATFORM": "macosx_13_0_arm64", "GOOS": "linux"},
        {"GOOS": "windows", "GOARCH": "amd64"},
        {"GOOS": "linux", "GOARCH": "riscv64"},
    ],
)
def test_select_target_refuses_unknown_or_contradictory_targets(env: dict[str, str]) -> None:
    with pytest.raises(hatch_build.TargetError):
        hatch_build.select_target(env)


def test_inspect_binary_sees_the_built_helper_as_static_and_stripped() -> None:
    info = binfmt.inspect_binary(find_helper().read_bytes())
    assert (info.goos, info.goarch) == (hatch_build.host_goos(), hatch_build.host_goarch())
    if info.goos == "linux":
        assert info.static and info.stripped
