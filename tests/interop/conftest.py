"""Interoperability tests against a real Headscale server (tsproc.testing.headscale_tailnet).

The binary comes from ``$TSPROC_HEADSCALE``, or is built once into ``.cache/bin/`` by
build_headscale.py (``make test`` does that first). Run directly, the tests build it when they
are collected (a few minutes, once), and are skipped only if it cannot be built at all, with the
reason.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.interop.build_headscale import CACHED, BuildError, build
from tsproc.testing import HeadscaleTailnet, headscale_tailnet
from tsproc.testing._headscale import HEADSCALE_VERSION

HERE = Path(__file__).parent
USER = "alice"
_binary_key = pytest.StashKey[Path | str]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Build here rather than in a fixture: a cold build outlasts the per-test timeout.
    if not any(HERE in Path(item.path).parents for item in items):
        return
    if os.environ.get("TSPROC_HEADSCALE"):
        config.stash[_binary_key] = Path(os.environ["TSPROC_HEADSCALE"])
        return
    if not CACHED.exists():
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"building Headscale {HEADSCALE_VERSION} into {CACHED} "
                                "for tests/interop (once; a few minutes)")
    try:
        config.stash[_binary_key] = build()
    except BuildError as exc:
        config.stash[_binary_key] = str(exc)


@pytest.fixture(scope="session")
def headscale_binary(pytestconfig: pytest.Config) -> Path:
    found = pytestconfig.stash.get(_binary_key, None)
    if not isinstance(found, Path):
        pytest.skip(f"Headscale {HEADSCALE_VERSION} could not be built, so the interop tests "
                    f"cannot run: {found}")
    return found


@pytest.fixture
async def headscale(headscale_binary: Path) -> AsyncIterator[HeadscaleTailnet]:
    """A fresh Headscale tailnet with the user ``alice``, for one test."""
    async with headscale_tailnet(user=USER, headscale_path=headscale_binary) as net:
        yield net
