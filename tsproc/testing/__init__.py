"""Tailnets for tests and demos."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._local import LocalTailnet, local_tailnet

if TYPE_CHECKING:
    from ._headscale import HeadscaleError, HeadscaleNode, HeadscaleTailnet, headscale_tailnet

__all__ = [
    "HeadscaleError",
    "HeadscaleNode",
    "HeadscaleTailnet",
    "LocalTailnet",
    "headscale_tailnet",
    "local_tailnet",
]

_HEADSCALE = frozenset({"HeadscaleError", "HeadscaleNode", "HeadscaleTailnet", "headscale_tailnet"})


def __getattr__(name: str) -> Any:
    # Headscale's runner loads when first asked for: `import tsproc.aio` (which imports the local
    # tailnet from here) must not execute it.
    if name in _HEADSCALE:
        from . import _headscale  # noqa: PLC0415

        return getattr(_headscale, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
