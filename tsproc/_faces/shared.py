"""What the asyncio and blocking faces share above the trio side (:mod:`tsproc._bridge`): the
node's read-only facts, and the local tailnet a face's tests and demos run on.

Both are the same code for either face: attribute reads of trio objects, which never wait,
so they need no call into the node's thread.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any, Protocol

from .. import NodeState

if TYPE_CHECKING:
    from .. import testing
    from .._core.types import IPAddress
    from .bridge import NodeRuntime


class NodeFacts:
    """The read-only facts of a face's node: plain attribute reads of the trio node."""

    _runtime: NodeRuntime

    @property
    def hostname(self) -> str:
        return self._runtime.node.hostname

    @property
    def state(self) -> NodeState:
        return self._runtime.node.state

    @property
    def tailscale_ips(self) -> tuple[IPAddress, ...]:
        return self._runtime.node.tailscale_ips

    @property
    def helper_pid(self) -> int | None:
        return self._runtime.node.helper_pid


class _Named(Protocol):
    @property
    def hostname(self) -> str: ...


class FaceLocalTailnet:
    """A local tailnet (:func:`tsproc.testing.local_tailnet`) whose trio side runs in a thread
    of its own, as a face shows it: everything but the trio nodes forwards to it."""

    def __init__(self, tailnet: testing.LocalTailnet) -> None:
        self._tailnet = tailnet
        self.control_url = tailnet.control_url
        """Give it to a node as ``control_url``."""

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__name__} {self.control_url}>"

    @property
    def https(self) -> bool:
        """The tailnet issues certificates and offers Funnel (``local_tailnet(https=True)``)."""
        return self._tailnet.https

    @property
    def magic_dns_suffix(self) -> str:
        """The tailnet's DNS suffix (``tailnet.test``)."""
        return self._tailnet.magic_dns_suffix

    @property
    def ca_cert(self) -> str:
        """See :attr:`tsproc.testing.LocalTailnet.ca_cert` (raises TlsUnavailableError
        without ``https=True``)."""
        return self._tailnet.ca_cert

    def ssl_context(self) -> ssl.SSLContext:
        """A client :class:`ssl.SSLContext` that trusts :attr:`ca_cert` and nothing else."""
        return self._tailnet.ssl_context()

    def funnel_address(self, node: _Named | str, port: int = 443) -> tuple[str, int]:
        """See :meth:`tsproc.testing.LocalTailnet.funnel_address`."""
        return self._tailnet.funnel_address(_hostname(node), port)

    def dns_name(self, node: _Named | str) -> str:
        """The MagicDNS name of *node* (or of a hostname) on this tailnet: its cert domain."""
        return self._tailnet.dns_name(_hostname(node))

    @property
    def ingress_hostname(self) -> str | None:
        """The hostname of the Funnel ingress node; None without ``https``."""
        return self._tailnet.ingress_hostname

    def _node_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """A node's arguments with this tailnet's defaults, as its ``node()`` gives them."""
        return self._tailnet._node_kwargs(kwargs)


def _hostname(node: _Named | str) -> str:
    return node if isinstance(node, str) else node.hostname
