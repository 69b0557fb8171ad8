"""The public :class:`Node`: its arguments, properties, context manager and calls.

Its life (state machine, supervision of the helpers behind it) is the private base class in
``lifecycle.py``; the helpers are :class:`~tsproc._core.generation.Generation` objects. The node's
identity lives in its state directory, so a new helper is the same tailnet node. Arguments are
checked by :class:`~tsproc._core.config.NodeConfig`; events fan out through ``events.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, final

import trio

from .._wire.rpc import Reply
from ..errors import HelperDiedError, InvalidArgumentError, ProtocolError
from .config import (
    CALL_BOUND,
    DEFAULT_BACKLOG,
    DIAL_BOUND,
    PING_BOUND,
    NodeConfig,
    call_deadline,
    check_backlog,
    check_host,
    check_port,
    limit_until,
    ms_until,
)
from .events import EventStream
from .lifecycle import NodeLifecycle
from .packet import TailnetPacketConn
from .streams import TailnetListener, TailnetStream
from .supervisor import RestartPolicy
from .types import IPAddress, NodeState, PingResult, Status, WhoIs

__all__ = ["EventStream", "Node"]


@final
class Node(NodeLifecycle):
    """A Tailscale node run by a supervised helper process.

    Use it as an async context manager; entering starts the helper and (by default) waits until
    the node is Running on the tailnet; leaving closes every listener and stream, stops the
    helper and, for an ephemeral node, logs it out::

        async with tsproc.Node("web", auth_key=key, control_url=url) as node:
            listener = await node.listen(80)
            await trio.serve_listeners(handler, [listener])

    Args:
        hostname: the node's name on the tailnet (letters, digits, hyphens; at most 63).
        auth_key: a pre-auth key; used only when the node has no saved identity. Never logged,
            never put in a child's argv or environment.
        control_url: the coordination server (default: Tailscale's).
        state_dir: where the node keeps its identity. Default:
            ``platformdirs.user_state_dir("tsproc")/<hostname>``; for an ephemeral node, a
            temporary directory removed on close. Created 0700; locked while the node runs.
        ephemeral: register as an ephemeral node (removed from the tailnet when it goes away).
        tags: ACL tags to advertise, each ``"tag:…"``.
        up_timeout: seconds to wait for Running when entering; None waits under the caller's
            cancel scope (for interactive login).
        wait_running: False returns from ``__aenter__`` as soon as the helper has started, to
            watch :meth:`events` for an auth URL; then use :meth:`wait_running`.
        restart: how the helper is watched and restarted.
        memory_limit: a soft memory cap for the helper in bytes (Go's GOMEMLIMIT).
        helper_env: extra environment variables for this node's helper — tsnet and Go knobs
            such as ``TS_DEBUG_USE_DERP_HTTP``; never secrets (a value that looks like an auth
            key is refused: the helper's environment is visible to the machine's other users).
        helper_path: the helper binary (default: ``$TSPROC_HELPER`` or the packaged one).
        advertise_routes: subnet routes (``"10.77.0.0/24"``) this node offers to the tailnet;
            once approved, connections to addresses inside them arrive at
            :meth:`listen_any_port` with the original destination as ``local_addr``.
        acme_directory_url: the ACME server that issues this node's certificates instead of
            Let's Encrypt (a local tailnet's own, set by ``LocalTailnet.node``).
        acme_roots: PEM certificates the node trusts for that ACME server (and only those).

    Raises (from ``__aenter__``):
        InvalidArgumentError, AuthError, NodeTimeoutError (with the node's health),
        NeedsLoginError, StateDirLocked, HelperNotFoundError, HelperVersionError,
        HelperCrashLoop.
    """

    def __init__(
        self,
        hostname: str,
        *,
        auth_key: str | None = None,
        control_url: str | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        ephemeral: bool = False,
        tags: Iterable[str] = (),
        up_timeout: float | None = 30.0,
        wait_running: bool = True,
        restart: RestartPolicy | None = None,
        memory_limit: int | None = None,
        helper_env: Mapping[str, str] | None = None,
        helper_path: str | os.PathLike[str] | None = None,
        advertise_routes: Iterable[str] = (),
        acme_directory_url: str | None = None,
        acme_roots: str | None = None,
    ) -> None:
        super().__init__(NodeConfig(
            hostname, auth_key=auth_key, control_url=control_url, state_dir=state_dir,
            ephemeral=ephemeral, tags=tags, up_timeout=up_timeout, wait_running=wait_running,
            restart=restart, memory_limit=memory_limit, helper_env=helper_env,
            helper_path=helper_path, advertise_routes=advertise_routes,
            acme_directory_url=acme_directory_url, acme_roots=acme_roots,
        ))
        self.control_url = control_url
        self.ephemeral = ephemeral

    def __repr__(self) -> str:
        ips = ",".join(str(ip) for ip in self._ips) or "no IP yet"
        key = ", auth_key=<redacted>" if self._config.auth_key else ""
        state = self._state.value
        if self._state is NodeState.NEW:
            state = "new (not started: use `async with node`)"
        elif self._start_failure is not None:
            state = f"{state} (start failed: {type(self._start_failure).__name__})"
        return f"<tsproc.Node {self.hostname!r} {state} {ips}{key}>"

    # -- properties --

    @property
    def state(self) -> NodeState:
        """Where the node is: starting, running, restarting, failed or closed."""
        return self._state

    @property
    def tailscale_ips(self) -> tuple[IPAddress, ...]:
        """The node's tailnet addresses (IPv4 first), as of the last time it came up."""
        return self._ips

    @property
    def state_dir(self) -> Path | None:
        """The state directory in use (None before the node starts)."""
        return self._state_dir.path if self._state_dir else None

    @property
    def backend_state(self) -> str:
        """The tailnet backend's state as the helper last reported it (``NeedsLogin``,
        ``Starting``, ``Running`` …; '' before the first report)."""
        return self._backend_state

    @property
    def health(self) -> tuple[str, ...]:
        """tsnet's warnings as the helper last reported them, as soon as it reports them
        (say, why the control server cannot be reached); empty when all is well."""
        return self._health

    @property
    def auth_url(self) -> str:
        """The interactive login URL while the node needs one, else ''."""
        return self._auth_url

    @property
    def helper_pid(self) -> int | None:
        """The current helper's process id (None while none runs)."""
        gen = self._generation
        return gen.process.pid if gen is not None and not gen.died.is_set() else None


    # -- life cycle --

    async def __aenter__(self) -> Node:
        if self._entered:
            raise RuntimeError("a Node can be entered only once; create a new one")
        self._entered = True
        await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.aclose()
        finally:
            stack, self._stack = self._stack, None
            if stack is not None:
                await stack.__aexit__(None, None, None)

    async def aclose(self) -> None:
        """Close every listener and stream, stop the helper (an ephemeral node logs out), and
        release the state directory. Idempotent; bounded by ``restart.shutdown_grace``."""
        with trio.CancelScope(shield=True):
            await self._shutdown()
        await trio.lowlevel.checkpoint()

    async def wait_running(self) -> None:
        """Wait until the node is Running on the tailnet, under the caller's cancel scope.

        Without a deadline it waits as long as the node is getting there, never on a helper
        that stopped answering: each helper is bounded by the heartbeat and ``up_timeout``,
        and one that keeps failing fails the node (HelperCrashLoop). Only an interactive
        login with ``up_timeout=None`` waits as long as the person takes.

        Raises:
            HelperCrashLoop (or the error that failed the node), NodeClosedError.
        """
        await self._running_generation(None)

    def events(self) -> EventStream:
        """Subscribe to this node's events from now on (state changes, auth URLs, restarts,
        crash loop). The iterator ends when the node closes.

        A subscriber that falls 256 events behind loses the *newest* ones, counted in
        :attr:`EventStream.dropped`: what it has queued stays in order, and the node's
        present state is always :attr:`state`.
        """
        return self._events.subscribe()

    # -- using the node --

    async def listen(self, port: int, *, backlog: int = DEFAULT_BACKLOG) -> TailnetListener:
        """Listen for tailnet TCP connections to *port* on this node's addresses.

        The listener survives helper restarts. Use it with :func:`trio.serve_listeners`.

        Raises:
            InvalidArgumentError: bad port or backlog.
            AddressInUseError: this node already listens on that port.
            LimitError: the node already has 256 listeners.
        """
        check_port(port)
        params = {"network": "tcp", "port": port, "backlog": check_backlog(backlog)}
        return await self._open_listener("listen", params, port, backlog)

    async def listen_tls(self, port: int, *, backlog: int = DEFAULT_BACKLOG) -> TailnetListener:
        """Listen for TLS connections to *port*, with a certificate for this node's MagicDNS
        name issued through the tailnet. The helper terminates TLS: streams carry plaintext.

        Needs a tailnet with MagicDNS and HTTPS certificates enabled in its admin console
        (see :meth:`cert_domains`).

        Raises:
            TlsUnavailableError: the tailnet issues no certificates to this node.
        """
        check_port(port)
        params = {"port": port, "backlog": check_backlog(backlog)}
        return await self._open_listener("listen_tls", params, port, backlog)

    async def listen_funnel(self, port: int, *, funnel_only: bool = False,
                            backlog: int = DEFAULT_BACKLOG) -> TailnetListener:
        """Listen on *port* for connections from the public internet through Tailscale Funnel
        (and from the tailnet, unless *funnel_only*). TLS is terminated in the helper.

        Needs HTTPS certificates and a tailnet policy that grants this node the ``funnel``
        attribute; Funnel serves ports 443, 8443 and 10000.

        Raises:
            TlsUnavailableError: the tailnet issues no certificates to this node.
            FunnelUnavailableError: the tailnet does not allow Funnel here.
        """
        check_port(port)
        params = {"port": port, "backlog": check_backlog(backlog),
                  "funnel_only": bool(funnel_only)}
        return await self._open_listener("listen_funnel", params, port, backlog)

    async def listen_any_port(self, *, backlog: int = DEFAULT_BACKLOG) -> TailnetListener:
        """Accept TCP connections to every port of this node that no other listener holds
        (tsnet's fallback TCP handler). Each stream's ``local_addr`` is the address the peer
        dialled, so a handler can dispatch on the destination port.

        When ``backlog`` connections wait unaccepted, further ones are refused (reset).
        """
        params = {"backlog": check_backlog(backlog)}
        return await self._open_listener("listen_any_port", params, 0, backlog)

    async def _open_listener(self, method: str, params: dict[str, Any], port: int,
                             backlog: int) -> TailnetListener:
        deadline, own = call_deadline(CALL_BOUND)
        gen = await self._running_generation(own)
        listener = TailnetListener._create(port, backlog, self._on_accept,
                                           self._on_listener_close, spec=(method, params))
        await gen.request(method, {**params, "timeout_ms": ms_until(deadline)},
                          on_result=gen.listener_handler(listener, new=True),
                          limit=limit_until(deadline))
        self._listeners.add(listener)
        return listener

    async def listen_packet(self, port: int = 0) -> TailnetPacketConn:
        """A UDP socket on *port* of this node's tailnet IPv4 address (0: any free port).

        Raises:
            AddressInUseError: the port is taken.
        """
        if port != 0:
            check_port(port)
        gen = await self._live_generation()
        return await gen.request("listen_packet", {"port": port}, on_result=gen.new_packet_conn)

    async def dial_udp(self, host: str, port: int) -> TailnetPacketConn:
        """A UDP socket connected to *host*:*port* on the tailnet (use ``send``/``receive``).

        Resolving *host* follows the caller's deadline; without one it gives up after 30 s.

        Raises:
            DialError: *host* is not on the tailnet.
            NodeTimeoutError: no deadline was set, and 30 s passed.
        """
        check_host(host)
        check_port(port)
        deadline, own = call_deadline(DIAL_BOUND)
        gen = await self._running_generation(own)
        return await gen.request(
            "dial_udp", {"host": host, "port": port, "timeout_ms": ms_until(deadline)},
            on_result=gen.new_packet_conn, limit=limit_until(deadline),
        )

    async def ping(self, peer: str) -> PingResult:
        """Ping *peer* (a tailnet name or IP) with TSMP, through WireGuard: the latency, and
        whether the path is direct or relayed through DERP.

        It follows the caller's deadline (``with trio.fail_after(5): await node.ping(...)``);
        without one it gives up after 10 s.

        Raises:
            DialError: *peer* is not on the tailnet (an unknown name, or an address no node
                holds), at once.
            NodeTimeoutError: no answer (without a deadline of the caller's: within 10 s).
        """
        check_host(peer)
        deadline, own = call_deadline(PING_BOUND)
        gen = await self._running_generation(own)
        reply = await gen.request(
            "ping_peer", {"host": peer, "timeout_ms": ms_until(deadline)},
            limit=limit_until(deadline),
        )
        return PingResult.from_wire(reply.result)

    async def cert_domains(self) -> tuple[str, ...]:
        """The DNS names the tailnet issues HTTPS certificates for to this node (empty when
        HTTPS is not enabled: then :meth:`listen_tls` and :meth:`listen_funnel` fail)."""
        reply = await self._request_in_time("cert_domains", {})
        domains = reply.result.get("domains")
        return tuple(str(d) for d in domains) if isinstance(domains, list) else ()

    async def cert_pair(self, domain: str) -> tuple[bytes, bytes]:
        """The certificate chain and private key for *domain* (one of :meth:`cert_domains`),
        both PEM, from the node's cache or issued through the tailnet (tsnet's
        ``LocalClient.CertPair``): for a server that terminates TLS itself, such as hypercorn
        (``tsproc.asgi.serve`` with ``certfile``/``keyfile`` in its config).

        The key is a secret: keep it out of logs, and files holding it private (0600).

        Raises:
            TlsUnavailableError: the tailnet issues no certificates to this node, or not for
                *domain*.
        """
        if not isinstance(domain, str) or not domain:
            raise InvalidArgumentError("cert_pair needs a domain, one of cert_domains()")
        reply = await self._request_in_time("cert_pair", {"domain": domain})
        cert, key = reply.result.get("cert_pem"), reply.result.get("key_pem")
        if not isinstance(cert, bytes) or not isinstance(key, bytes):
            raise ProtocolError("cert_pair answer without cert_pem and key_pem bytes")
        return cert, key

    async def dial(self, host: str, port: int) -> TailnetStream:
        """Open a TCP connection to *host*:*port* over the tailnet.

        *host* is a MagicDNS name (short like ``"db"`` or full), or a tailnet IP. It follows
        the caller's deadline (``with trio.fail_after(10): await node.dial(...)``), which the
        helper is given too; without one it gives up after 30 s. During a helper restart the
        dial waits for the node, and tries again if the helper dies mid-dial.

        Raises:
            InvalidArgumentError: bad host or port.
            DialError: unknown host, refused, unreachable.
            NodeTimeoutError: not connected (without a deadline of the caller's: within 30 s).
        """
        check_host(host)
        check_port(port)
        deadline, own = call_deadline(DIAL_BOUND)
        while True:
            gen = await self._running_generation(own)
            params = {"network": "tcp", "host": host, "port": port,
                      "timeout_ms": ms_until(deadline)}
            try:
                return await gen.request("dial", params, on_result=gen.new_stream,
                                         limit=limit_until(deadline))
            except HelperDiedError:
                if trio.current_time() >= deadline:
                    raise
                # The helper died mid-dial: the next one will try again.

    async def status(self) -> Status:
        """The node's current status: backend state, addresses, peers, helper figures."""
        deadline, own = call_deadline(CALL_BOUND)
        gen = await self._running_generation(own)
        reply = await gen.request("status", {"timeout_ms": ms_until(deadline)},
                                  limit=limit_until(deadline))
        restarts = self._supervisor.restarts if self._supervisor else 0
        return Status.from_wire(reply.result, pid=gen.process.pid, restarts=restarts)

    async def _stream_whois(self, addr: tuple[str, int]) -> WhoIs:
        return await self.whois(addr)

    async def whois(self, addr: str | tuple[str, int] | IPAddress) -> WhoIs:
        """Who is behind a tailnet address: the peer node and its user.

        *addr* is an IP, ``"ip:port"``, or a ``(ip, port)`` tuple such as
        ``stream.remote_addr``.

        Raises:
            NotFoundError: no tailnet node has that address; for the ``remote_addr`` of a
                stream that came through Funnel, whose client is on the internet, always.
        """
        if isinstance(addr, tuple):
            ip, port = addr
            text = f"[{ip}]:{port}" if ":" in str(ip) else f"{ip}:{port}"
        else:
            text = str(addr)
        if not text:
            raise InvalidArgumentError("whois needs an address")
        reply = await self._request_in_time("whois", {"addr": text})
        return WhoIs.from_wire(reply.result)

    async def logout(self) -> None:
        """Log the node out of the tailnet (its saved identity becomes useless)."""
        await self._request_in_time("logout", {})

    async def _request_in_time(self, method: str, params: dict[str, Any]) -> Reply:
        """A request that waits in the helper, within the caller's deadline (else CALL_BOUND
        from now), which the helper is given as its timeout_ms."""
        deadline, own = call_deadline(CALL_BOUND)
        gen = await self._running_generation(own)
        return await gen.request(method, {**params, "timeout_ms": ms_until(deadline)},
                                 limit=limit_until(deadline))

