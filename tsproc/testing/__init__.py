"""A local tailnet for tests and demos: Tailscale's test control server, a DERP relay and a
STUN server, all on 127.0.0.1, run by ``tsproc-helper control``.

    async with tsproc.testing.local_tailnet() as tailnet:
        async with tailnet.node("a") as a, tailnet.node("b") as b:
            ...

With ``https=True`` the tailnet also issues real certificates (an embedded ACME server, the
same DNS-01 flow as Let's Encrypt) and plays Funnel's ingress, all offline::

    async with tsproc.testing.local_tailnet(https=True) as tailnet:
        async with tailnet.node("web") as web:
            listener = await web.listen_tls(443)
            ...  # a client trusts tailnet.ssl_context()

With pytest and pytest-trio, the plugin (installed with tsproc) gives the ``tailnet`` fixture
and the ``tailnet_node`` factory: see the README.

:func:`headscale_tailnet` runs Headscale, the open-source control server people deploy, on
127.0.0.1 instead (bring your own ``headscale`` binary; see its docstring).
"""

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
