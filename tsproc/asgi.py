"""Serve an ASGI application on the tailnet with hypercorn (``pip install 'tsproc[asgi]'``).

    import tsproc.asgi

    async with tsproc.Node("web", auth_key=key) as node:
        await tsproc.asgi.serve(app, node, 80)

The app gets tailnet facts it can trust:

- ``scope["client"]`` is the tailnet peer's ``(ip, port)`` and ``scope["server"]`` this node's.
- ``scope["extensions"]["tsproc.whois"]`` is who the peer is, as the tailnet (not the request)
  says: a dict of plain values, named as :class:`~tsproc.WhoIs` names them — ``login_name``,
  ``display_name``, ``user_id`` (``whois.user.*``); ``hostname``, ``dns_name`` (the full MagicDNS
  name), ``node_id``, ``tags``, ``tailscale_ips`` (``whois.node.*``; addresses as strings, as in
  ``scope["client"]`` and ``tsproc status --json``) — and ``whois``, the
  :class:`~tsproc.WhoIs` itself. :func:`scope_whois` returns the latter.
- Request headers that claim a tailnet identity never reach the app: every header named
  ``Tailscale-*``, ``X-Tailscale-*`` or ``X-Webauth-*`` (case-insensitive, ``_`` counted as
  ``-``; among them ``Tailscale-User-Login``, ``Tailscale-User-Name``,
  ``Tailscale-User-Profile-Pic`` and ``Tailscale-Headers-Info``, which Tailscale's own serve
  proxy sets) is removed, so code written for those headers cannot be fooled through tsproc.

This holds for ``http`` and ``websocket`` scopes alike.

**hypercorn internals.** hypercorn has no public way to serve on a listener of one's own; this
module runs hypercorn's trio ``TCPServer`` (and ``Lifespan``, ``WorkerContext``) under
:func:`trio.serve_listeners`, as ``hypercorn.trio.run.worker_serve`` does. Those are internal,
so the ``asgi`` extra pins hypercorn exactly (:data:`HYPERCORN_VERSION`) and the tests run
against that version; importing this module with another version warns.
"""

from __future__ import annotations

import importlib.metadata
import logging
import ssl
import warnings
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from random import randint
from typing import Any, Final, final

import trio

try:
    from hypercorn.config import Config
    from hypercorn.trio.lifespan import Lifespan
    from hypercorn.trio.statsd import StatsdLogger
    from hypercorn.trio.tcp_server import TCPServer
    from hypercorn.trio.worker_context import WorkerContext
    from hypercorn.typing import AppWrapper, ConnectionState, LifespanState
    from hypercorn.utils import wrap_app
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        f"tsproc.asgi needs hypercorn: pip install 'tsproc[asgi]' ({exc})"
    ) from exc

from ._core.config import DEFAULT_BACKLOG
from ._core.node import Node
from ._core.streams import TailnetStream
from ._core.types import WhoIs
from ._identity import (
    IDENTITY_HEADER_PREFIXES,
    WHOIS_EXTENSION,
    PeerApp,
    TailnetSocketInfo,
    identity,
    whois_peer,
)

__all__ = [
    "HYPERCORN_VERSION",
    "IDENTITY_HEADER_PREFIXES",
    "WHOIS_EXTENSION",
    "ASGIApp",
    "Config",
    "scope_whois",
    "serve",
]

HYPERCORN_VERSION: Final = "0.18.0"
"""The hypercorn release this module is written and tested against (its internals move)."""

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
"""An ASGI 3 application: ``async def app(scope, receive, send)``."""

_log = logging.getLogger("tsproc.asgi")

if importlib.metadata.version("hypercorn") != HYPERCORN_VERSION:  # pragma: no cover
    warnings.warn(
        f"tsproc.asgi is tested with hypercorn=={HYPERCORN_VERSION} and uses its internal trio "
        f"server; hypercorn {importlib.metadata.version('hypercorn')} is installed "
        "(pip install 'tsproc[asgi]' installs the tested one)",
        RuntimeWarning,
        stacklevel=2,
    )


def scope_whois(scope: Mapping[str, Any]) -> WhoIs | None:
    """The :class:`~tsproc.WhoIs` of the peer of an ``http``/``websocket`` scope served by
    :func:`serve` (None for any other scope)."""
    extensions = scope.get("extensions") or {}
    identity = extensions.get(WHOIS_EXTENSION)
    who = identity.get("whois") if isinstance(identity, dict) else None
    return who if isinstance(who, WhoIs) else None


@final
class _HypercornStream:
    """A TailnetStream with the surface hypercorn's TCPServer uses. It has no ``do_handshake``
    on purpose: that AttributeError is how TCPServer tells a plain stream from TLS."""

    def __init__(self, stream: TailnetStream) -> None:
        self._stream = stream
        self.socket = TailnetSocketInfo(stream)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


@final
class _ConnectionHandler:
    """Serves one tailnet connection with hypercorn, as its peer's identity allows."""

    def __init__(self, app: AppWrapper, config: Config, context: WorkerContext,
                 state: ConnectionState, node: Node, *,
                 ssl_context: ssl.SSLContext | None) -> None:
        self._app = app
        self._config = config
        self._context = context
        self._state = state
        self._node = node
        self._ssl_context = ssl_context

    async def __call__(self, stream: TailnetStream) -> None:
        app: AppWrapper
        if not stream.via_funnel:
            who = await whois_peer(self._node, stream.remote_addr, _log)
            if who is None:
                # No verified identity, no request: the app may rely on the extension.
                await trio.aclose_forcefully(stream)
                return
            app = PeerApp(self._app, identity(who))
        else:
            # From the internet through Funnel: no tailnet identity, so no extension; the
            # identity headers are still removed, for nobody on the internet may forge them.
            app = PeerApp(self._app, None)
        transport: Any = _HypercornStream(stream)
        if self._ssl_context is not None:
            # hypercorn terminates TLS itself (config certfile/keyfile, e.g. from cert_pair).
            transport = trio.SSLStream(transport, self._ssl_context, server_side=True)
        server = TCPServer(app, self._config, self._context, self._state, transport)
        try:
            await server.run()
        finally:
            # TCPServer closes the stream itself, except when cancelled inside its own cleanup
            # (its send_eof raises Cancelled before its aclose): close it here in any case.
            await trio.aclose_forcefully(stream)


async def serve(
    app: ASGIApp,
    node: Node,
    port: int = 80,
    *,
    config: Config | None = None,
    backlog: int = DEFAULT_BACKLOG,
    funnel: bool = False,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ASGI *app* on *port* of *node*'s tailnet addresses, until cancelled or
    *shutdown_trigger* returns.

    Opens the port, runs the app's lifespan startup (connections wait until it is done; an
    app without lifespan support is served anyway), then serves HTTP/1.1, HTTP/2 (h2c) and
    WebSocket connections from the tailnet. With ``nursery.start(serve, …)`` it reports once
    the port accepts connections, with the URL it serves (``http://<hostname>:<port>/``).

    Shutting down: when *shutdown_trigger* (for example ``event.wait``) returns, the port stops
    accepting, idle keep-alive connections close, requests in flight get
    ``config.graceful_timeout`` seconds to finish, the lifespan shutdown runs, and ``serve``
    returns. Cancelling ``serve`` instead stops everything at once (no lifespan shutdown).

    Args:
        app: an ASGI 3 application.
        node: the entered :class:`~tsproc.Node` to serve on.
        port: the tailnet TCP port.
        config: hypercorn settings (timeouts, limits, h11/h2 options, logs, and TLS:
            with ``certfile``/``keyfile`` — for example written from
            :meth:`~tsproc.Node.cert_pair` — hypercorn terminates TLS itself and serves
            ``https://``); bind addresses and worker settings in it do not apply.
        funnel: listen with :meth:`~tsproc.Node.listen_funnel` instead (TLS terminated by the
            helper, certificates from the tailnet): requests from the internet have
            ``scope["client"]`` set to the public client and no ``tsproc.whois`` extension.
        backlog: connections that may wait to be accepted.
        shutdown_trigger: an async function whose return starts a graceful shutdown.

    Raises:
        AddressInUseError: the node already listens on *port*.
        hypercorn's ``LifespanFailureError``: the app's lifespan startup failed.
    """
    config = config if config is not None else Config()
    config.set_statsd_logger_class(StatsdLogger)
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    max_requests = None
    if config.max_requests is not None:
        max_requests = config.max_requests + randint(0, config.max_requests_jitter)  # noqa: S311
    context = WorkerContext(max_requests)

    # The port opens before the app starts up, so a port conflict is a plain error before any
    # of the app's code runs; connections that arrive during startup wait in the backlog.
    ssl_context = config.create_ssl_context() if config.ssl_enabled and not funnel else None
    if funnel:
        listener = await node.listen_funnel(port, backlog=backlog)
    else:
        listener = await node.listen(port, backlog=backlog)
    try:
        async with trio.open_nursery() as lifespan_nursery:
            await lifespan_nursery.start(lifespan.handle_lifespan)
            await lifespan.wait_for_startup()
            async with trio.open_nursery() as connections:
                handler = _ConnectionHandler(wrapped, config, context,
                                             ConnectionState(lifespan_state.copy()), node,
                                             ssl_context=ssl_context)
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(partial(
                        trio.serve_listeners, handler, [listener], handler_nursery=connections,
                    ))
                    accepting.start_soon(_cancel_when, context.terminate.wait,
                                         accepting.cancel_scope)
                    if shutdown_trigger is not None:
                        accepting.start_soon(_cancel_when, shutdown_trigger,
                                             accepting.cancel_scope)
                    scheme = "https" if ssl_context is not None or funnel else "http"
                    task_status.started(f"{scheme}://{node.hostname}:{port}/")
                # Graceful shutdown: refuse new connections, let idle ones close (hypercorn
                # watches `terminated`) and give the busy ones graceful_timeout.
                await listener.aclose()
                await context.terminated.set()
                connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
            await lifespan.wait_for_shutdown()
            lifespan_nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await listener.aclose()


async def _cancel_when(trigger: Callable[[], Awaitable[object]], scope: trio.CancelScope) -> None:
    await trigger()
    scope.cancel()
