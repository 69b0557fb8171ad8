"""The local tailnet: Tailscale's test control server, a DERP relay and a STUN server on
127.0.0.1, run by ``tsproc-helper control``.

Private to :mod:`tsproc.testing`, which re-exports the public names.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from .._child.helper import HelperProcess, find_helper, helper_environment
from .._core.node import Node
from ..errors import HelperDiedError, InvalidArgumentError, TlsUnavailableError

__all__ = ["LocalTailnet", "local_tailnet"]

_READY_TIMEOUT = 60.0  # an https tailnet first brings its ingress node up


@dataclass
class LocalTailnet:
    """A running local tailnet.

    Attributes:
        control_url: give it to :class:`~tsproc.Node` as ``control_url``.
        auth_key: the key nodes must present (None when the tailnet accepts any node).
        magic_dns_suffix: the tailnet's DNS suffix (``tailnet.test``).
        https: the tailnet issues certificates and offers Funnel (``local_tailnet(https=True)``).
        info: everything the control server reported when it started.
    """

    control_url: str
    auth_key: str | None = field(repr=False)  # a secret: never in a repr or a traceback
    magic_dns_suffix: str
    info: dict[str, Any] = field(repr=False)
    _process: HelperProcess = field(repr=False)

    @property
    def https(self) -> bool:
        return "acme_directory_url" in self.info

    @property
    def ca_cert(self) -> str:
        """The PEM certificate of the CA that issues this tailnet's node certificates: what a
        client of :meth:`~tsproc.Node.listen_tls` trusts. It is made fresh for each tailnet.

        Raises:
            TlsUnavailableError: the tailnet was started without ``https=True``.
        """
        return self._https_info("ca_cert")

    def ssl_context(self) -> ssl.SSLContext:
        """A client :class:`ssl.SSLContext` that trusts :attr:`ca_cert` and nothing else, with
        hostname checking on (give it to httpx as ``verify=``, or to :mod:`ssl` sockets)."""
        return ssl.create_default_context(cadata=self.ca_cert)

    def funnel_address(self, node: Node | str, port: int = 443) -> tuple[str, int]:
        """Where a client on the "internet" connects to reach *node*'s Funnel *port* (443, 8443
        or 10000): a loopback ``(host, port)`` that the tailnet's ingress node relays, as
        Tailscale's do. The client starts TLS with SNI set to the node's MagicDNS name
        (``<hostname>.tailnet.test``), which is how the ingress picks the node.

        Raises:
            TlsUnavailableError: the tailnet was started without ``https=True``.
            InvalidArgumentError: *port* is not a Funnel port.
        """
        ports = self.info.get("funnel_ports") if self.https else None
        if not isinstance(ports, dict):
            raise TlsUnavailableError(
                "this local tailnet has no Funnel: start it with local_tailnet(https=True)")
        if str(port) not in ports:
            raise InvalidArgumentError(
                f"Funnel serves ports {', '.join(sorted(ports, key=int))}, not {port!r}")
        host = str(self.control_url.split("//", 1)[1].rsplit(":", 1)[0]).strip("[]")
        return host, int(ports[str(port)])

    def dns_name(self, node: Node | str) -> str:
        """The MagicDNS name of *node* (or of a hostname) on this tailnet: its cert domain."""
        hostname = node.hostname if isinstance(node, Node) else node
        return f"{hostname}.{self.magic_dns_suffix}"

    @property
    def ingress_hostname(self) -> str | None:
        """The hostname of the Funnel ingress node, a peer of every node on an ``https``
        tailnet (tagged ``tag:funnel-ingress``); None without ``https``."""
        name = self.info.get("ingress_hostname")
        return str(name) if name else None

    def node(self, hostname: str, **kwargs: Any) -> Node:
        """A :class:`~tsproc.Node` on this tailnet (ephemeral, with this tailnet's key unless
        given; on an ``https`` tailnet, getting its certificates from the tailnet's own ACME
        server). Use it with ``async with``."""
        return Node(hostname, **self._node_kwargs(kwargs))

    def _node_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """*kwargs* for a node with this tailnet's defaults filled in, as :meth:`node` uses
        them (the asyncio and blocking faces' ``node()`` too)."""
        kwargs = dict(kwargs)
        kwargs.setdefault("control_url", self.control_url)
        kwargs.setdefault("ephemeral", True)
        if self.auth_key is not None:
            kwargs.setdefault("auth_key", self.auth_key)
        if self.https:
            kwargs.setdefault("acme_directory_url", self.info["acme_directory_url"])
            kwargs.setdefault("acme_roots", self.info["acme_roots"])
        return kwargs

    def _https_info(self, key: str) -> str:
        value = self.info.get(key)
        if not isinstance(value, str) or not value:
            raise TlsUnavailableError(
                "this local tailnet issues no certificates: start it with "
                "local_tailnet(https=True)")
        return value

    async def complete_login(self, auth_url: str) -> None:
        """Complete an interactive login, as a person opening *auth_url* would."""
        if not auth_url.startswith(self.control_url + "/auth/"):
            raise InvalidArgumentError(f"{auth_url!r} is not an auth URL of this tailnet")
        await trio.to_thread.run_sync(_http_get, auth_url)


def _http_get(url: str) -> None:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - our loopback URL
        response.read()


@asynccontextmanager
async def local_tailnet(
    *,
    require_auth_key: str | None = None,
    interactive_login: bool = False,
    https: bool = False,
    helper_path: str | os.PathLike[str] | None = None,
) -> AsyncIterator[LocalTailnet]:
    """Run a local tailnet for the duration of the ``async with`` block.

    Args:
        require_auth_key: nodes must present this key (passed to the server on its stdin, never
            in argv).
        interactive_login: nodes without a key get an auth URL; see
            :meth:`LocalTailnet.complete_login`.
        https: also issue HTTPS certificates to nodes (an ACME server and its DNS server on
            127.0.0.1; trust :attr:`LocalTailnet.ca_cert`) and offer Funnel through a local
            ingress node (:meth:`LocalTailnet.funnel_address`). Its ingress node is a peer
            of every node. Each tailnet has a new CA, and nodes drop certificates cached from
            another one.

            A node asks the system's DNS resolver once for the ``_acme-challenge`` TXT record
            before publishing it (tsnet does, best effort); run where that query stays on the
            machine if that matters (tsproc's own tests run in a network namespace).
        helper_path: the helper binary (default: ``$TSPROC_HELPER`` or the packaged one).
    """
    path = find_helper(helper_path)
    args = ["control"]
    if require_auth_key is not None:
        args += ["--require-auth-key", "-"]
    if interactive_login:
        args.append("--require-interactive-login")
    if https:
        args.append("--https")
    process = HelperProcess.spawn(path, args, helper_environment())
    sock = trio.socket.from_stdlib_socket(process.control)
    # A system task, not a nursery: the caller's exceptions must come out of the `async with`
    # as themselves, not wrapped in an ExceptionGroup. watch() never raises; it always reaps.
    trio.lowlevel.spawn_system_task(process.watch, name=f"tsproc control {process.pid}")
    try:
        if require_auth_key is not None:
            await sock.send((require_auth_key + "\n").encode())
        info = await _read_ready_line(sock, process)
        yield LocalTailnet(
            control_url=info["control_url"],
            auth_key=require_auth_key,
            magic_dns_suffix=str(info.get("magic_dns_suffix", "")),
            info=info,
            _process=process,
        )
    finally:
        with trio.CancelScope(shield=True):
            # EOF on its stdin stops it; SIGTERM, then SIGKILL, if it dawdles.
            sock.close()
            with trio.move_on_after(5):
                await process.exited.wait()
            await process.terminate(5)


async def _read_ready_line(sock: trio.socket.SocketType, process: HelperProcess) -> dict[str, Any]:
    buf = b""
    with trio.move_on_after(_READY_TIMEOUT):
        while b"\n" not in buf:
            chunk = await sock.recv(4096)
            if not chunk:
                break
            buf += chunk
        else:
            line = buf.split(b"\n", 1)[0]
            info = json.loads(line)
            if isinstance(info, dict) and isinstance(info.get("control_url"), str):
                return info
    with trio.move_on_after(2):
        await process.exited.wait()
    raise HelperDiedError(
        "the local tailnet did not start (no ready line from `tsproc-helper control`; "
        f"{process.describe_exit()})",
        returncode=process.returncode,
        stderr_tail=list(process.stderr_tail),
    )
