"""pytest fixtures for testing tailnet applications offline (needs pytest-trio).

Installed as a ``pytest11`` plugin with tsproc:

    async def test_echo(tailnet, tailnet_node):
        async with tailnet_node("server") as server, tailnet_node("client") as client:
            ...

``tailnet`` is a :class:`tsproc.testing.LocalTailnet`; ``tailnet_node(hostname, **kwargs)`` makes
a :class:`tsproc.Node` on it (ephemeral by default).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from ._node import Node
from .testing import LocalTailnet, local_tailnet


@pytest.fixture
async def tailnet() -> AsyncIterator[LocalTailnet]:
    """A fresh local tailnet (control server, DERP, STUN on 127.0.0.1) for one test."""
    async with local_tailnet() as net:
        yield net


@pytest.fixture
def tailnet_node(tailnet: LocalTailnet) -> Callable[..., Node]:
    """A factory of nodes on the ``tailnet`` fixture: ``async with tailnet_node("a") as a``."""

    def make(hostname: str, **kwargs: Any) -> Node:
        return tailnet.node(hostname, **kwargs)

    return make
