"""pytest fixtures for testing tailnet applications offline (needs pytest-trio).

Installed as a ``pytest11`` plugin with tsproc:

    async def test_echo(tailnet, tailnet_node):
        async with tailnet_node("server") as server, tailnet_node("client") as client:
            ...

``tailnet`` is a :class:`tsproc.testing.LocalTailnet`; ``tailnet_node(hostname, **kwargs)`` makes
a :class:`tsproc.Node` on it (ephemeral by default). The ``tailnet`` marker passes options to
:func:`tsproc.testing.local_tailnet`, for example certificates and Funnel:

    @pytest.mark.tailnet(https=True)
    async def test_tls(tailnet, tailnet_node): ...

Without pytest-trio, a test that uses them fails with "install pytest-trio", not with pytest's
generic word on async fixtures.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from ._core.node import Node
from .testing import LocalTailnet, local_tailnet

_NEEDS_PYTEST_TRIO = (
    "tsproc's `tailnet` and `tailnet_node` fixtures run on trio and need pytest-trio: "
    "pip install pytest-trio (then mark the tests @pytest.mark.trio, or set trio_mode = true "
    "in your pytest settings)"
)


@pytest.hookimpl(tryfirst=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> None:
    """Say what is missing before pytest says it cannot run an async fixture."""
    if fixturedef.argname != "tailnet" or getattr(fixturedef.func, "__module__", "") != __name__:
        return
    if not request.config.pluginmanager.hasplugin("trio"):
        pytest.fail(_NEEDS_PYTEST_TRIO, pytrace=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "tailnet(**options): options of the tailnet fixture's local_tailnet() "
        "(https=True, require_auth_key=..., interactive_login=True)")


@pytest.fixture
async def tailnet(request: pytest.FixtureRequest) -> AsyncIterator[LocalTailnet]:
    """A fresh local tailnet (control server, DERP, STUN on 127.0.0.1) for one test; the
    ``tailnet`` marker's keyword arguments go to :func:`~tsproc.testing.local_tailnet`."""
    marker = request.node.get_closest_marker("tailnet")
    options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    async with local_tailnet(**options) as net:
        yield net


@pytest.fixture
def tailnet_node(tailnet: LocalTailnet) -> Callable[..., Node]:
    """A factory of nodes on the ``tailnet`` fixture: ``async with tailnet_node("a") as a``."""

    def make(hostname: str, **kwargs: Any) -> Node:
        return tailnet.node(hostname, **kwargs)

    return make
