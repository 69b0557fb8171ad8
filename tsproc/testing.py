"""A local tailnet for tests and demos: Tailscale's test control server, a DERP relay and a
STUN server, all on 127.0.0.1, run by ``tsproc-helper control``.

    async with tsproc.testing.local_tailnet() as tailnet:
        async with tailnet.node("a") as a, tailnet.node("b") as b:
            ...

With pytest and pytest-trio, the plugin (installed with tsproc) gives the ``tailnet`` fixture
and the ``tailnet_node`` factory: see the README.

:func:`headscale_tailnet` runs Headscale, the open-source control server people deploy, on
127.0.0.1 instead (bring your own ``headscale`` binary; see its docstring).
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from ._headscale import HeadscaleError, HeadscaleNode, HeadscaleTailnet, headscale_tailnet
from ._helper import HelperProcess, find_helper, helper_environment
from ._node import Node
from .errors import HelperDiedError, InvalidArgumentError

__all__ = [
    "HeadscaleError",
    "HeadscaleNode",
    "HeadscaleTailnet",
    "LocalTailnet",
    "headscale_tailnet",
    "local_tailnet",
]

_READY_TIMEOUT = 30.0


@dataclass
class LocalTailnet:
    """A running local tailnet.

    Attributes:
        control_url: give it to :class:`~tsproc.Node` as ``control_url``.
        auth_key: the key nodes must present (None when the tailnet accepts any node).
        magic_dns_suffix: the tailnet's DNS suffix (``tailnet.test``).
        info: everything the control server reported when it started.
    """

    control_url: str
    auth_key: str | None = field(repr=False)  # a secret: never in a repr or a traceback
    magic_dns_suffix: str
    info: dict[str, Any] = field(repr=False)
    _process: HelperProcess = field(repr=False)

    def node(self, hostname: str, **kwargs: Any) -> Node:
        """A :class:`~tsproc.Node` on this tailnet (ephemeral, with this tailnet's key unless
        given). Use it with ``async with``."""
        kwargs.setdefault("control_url", self.control_url)
        kwargs.setdefault("ephemeral", True)
        if self.auth_key is not None:
            kwargs.setdefault("auth_key", self.auth_key)
        return Node(hostname, **kwargs)

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
    helper_path: str | os.PathLike[str] | None = None,
) -> AsyncIterator[LocalTailnet]:
    """Run a local tailnet for the duration of the ``async with`` block.

    Args:
        require_auth_key: nodes must present this key (passed to the server on its stdin, never
            in argv).
        interactive_login: nodes without a key get an auth URL; see
            :meth:`LocalTailnet.complete_login`.
        helper_path: the helper binary (default: ``$TSPROC_HELPER`` or the packaged one).
    """
    path = find_helper(helper_path)
    args = ["control"]
    if require_auth_key is not None:
        args += ["--require-auth-key", "-"]
    if interactive_login:
        args.append("--require-interactive-login")
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
