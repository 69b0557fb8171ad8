"""The public :class:`Node`: its arguments, properties, context manager and calls.

Its life (state machine, supervision of the helpers behind it) is the private base class in
``lifecycle.py``; the helpers are :class:`~tsproc._core.generation.Generation` objects. The node's
identity lives in its state directory, so a new helper is the same tailnet node. Arguments are
checked by :class:`~tsproc._core.config.NodeConfig`; events fan out through ``events.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import TracebackType
from typing import Any, final

import trio

from .._wire.rpc import Reply
from ..errors import HelperDiedError, InvalidArgumentError, ProtocolError
from .capture import CaptureFormat, capture_to_file
from .config import (
    CALL_BOUND,
    DEFAULT_BACKLOG,
    DIAL_BOUND,
    EXIT_NODE_BOUND,
    PING_BOUND,
    NodeConfig,
    call_deadline,
    check_backlog,
    check_exit_node,
    check_host,
    check_port,
    limit_until,
    ms_until,
)
from .events import EventStream
from .forward import DEFAULT_NODE_WAIT, Forward, Socks5Proxy, open_forward, open_socks5
from .lifecycle import NodeLifecycle
from .packet import TailnetPacketConn
from .statestore import StateStore
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
        memory_profile: ``"default"`` (tsnet's sizes, the most throughput per connection) or
            ``"small"``: a helper for a small machine, under 100 MB in bulk transfers instead of
            several hundred, at the price of a 64 KiB TCP window per connection, which caps one
            stream at about 1.3 MB/s on a path of 50 ms round trip (README, "A node on a small
            machine").
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
        state: where the node keeps its identity, instead of *state_dir*: a directory,
            ``"memory"`` (ephemeral nodes only: nothing is kept), or a
            :class:`~tsproc.StateStore` — any object with ``read(key)`` and
            ``write(key, value)``, plain or async — that the helper asks for every read and
            write, so the keys can live in a database, a Secret or a vault.
        client_secret: an OAuth client secret (``tskey-client-…``) to get an auth key with,
            instead of *auth_key*; *tags* are then required by Tailscale.
        exit_node: a node (name or tailnet IP) to send traffic for addresses outside the
            tailnet through: :meth:`dial` and :meth:`dial_udp` then reach the internet via
            that exit node (without one they refuse such addresses). See :meth:`set_exit_node`.
        advertise_exit_node: offer this node as an exit node; with :meth:`listen_any_port`,
            the flows other nodes send through it arrive with their original destination as
            ``local_addr`` (nothing is forwarded to the host's network).
        client_id, id_token, audience: workload identity federation: the OAuth client's ID
            with an ID token from the workload's identity provider, or with the *audience*
            to request one for. Like *auth_key*, these never reach argv, a child's
            environment, logs or reprs. All of them need Tailscale's API.

    Raises (from ``__aenter__``):
        InvalidArgumentError, AuthError, NodeTimeoutError (with the node's health),
        NeedsLoginError, StateDirLocked, HelperNotFoundError, HelperVersionError,
        HelperCrashLoop.
    """

    _tsproc_face = "trio"  # tsproc._util.require_face: integrations check the node's world

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
        memory_profile: str = "default",
        helper_env: Mapping[str, str] | None = None,
        helper_path: str | os.PathLike[str] | None = None,
        advertise_routes: Iterable[str] = (),
        acme_directory_url: str | None = None,
        acme_roots: str | None = None,
        state: str | os.PathLike[str] | StateStore | None = None,
        client_secret: str | None = None,
        client_id: str | None = None,
        id_token: str | None = None,
        audience: str | None = None,
        exit_node: str | None = None,
        advertise_exit_node: bool = False,
    ) -> None:
        super().__init__(NodeConfig(
            hostname, auth_key=auth_key, control_url=control_url, state_dir=state_dir,
            ephemeral=ephemeral, tags=tags, up_timeout=up_timeout, wait_running=wait_running,
            restart=restart, memory_limit=memory_limit, memory_profile=memory_profile,
            helper_env=helper_env,
            helper_path=helper_path, advertise_routes=advertise_routes,
            acme_directory_url=acme_directory_url, acme_roots=acme_roots, state=state,
            client_secret=client_secret, client_id=client_id, id_token=id_token,
            audience=audience, exit_node=exit_node,
            advertise_exit_node=bool(advertise_exit_node),
        ))
        self.control_url = control_url
        self.ephemeral = ephemeral

    def __repr__(self) -> str:
        ips = ",".join(str(ip) for ip in self._ips) or "no IP yet"
        config = self._config
        key = "".join(f", {name}=<redacted>" for name in ("auth_key", "client_secret", "id_token")
                      if getattr(config, name))
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

    async def listen_service(self, service: str, port: int, *, terminate_tls: bool = False,
                             backlog: int = DEFAULT_BACKLOG) -> TailnetListener:
        """Host the Tailscale Service *service* (``"svc:web"``) on *port*: advertise this node
        as one of its hosts and accept the connections clients make to the service — by its
        MagicDNS name (``node.dial("web.<tailnet domain>", port)`` or ``"svc:web"``), which
        reaches whichever host the tailnet routes the service to. Closing the listener
        withdraws the advertisement (when no other listener of this node hosts the service).

        Only tagged nodes may host a service, and the tailnet must approve the host (its
        policy's auto-approvers, or an admin); a service with several ports needs a listener
        per port. With *terminate_tls* the helper terminates TLS with a certificate for the
        service's name, which needs HTTPS certificates on the tailnet.

        Raises:
            InvalidArgumentError: not a service name (``svc:`` and a DNS label), bad port.
            UntaggedServiceHostError: this node has no tags.
            AddressInUseError: this node already hosts *service* on *port*.
            TlsUnavailableError: *terminate_tls* without HTTPS certificates.
        """
        if not isinstance(service, str) or not service.startswith("svc:"):
            raise InvalidArgumentError(
                f"service must be a Tailscale Service name like 'svc:web', got {service!r}")
        check_port(port)
        params = {"service": service, "port": port, "terminate_tls": bool(terminate_tls),
                  "backlog": check_backlog(backlog)}
        return await self._open_listener("listen_service", params, port, backlog)

    def forward(self, host: str, port: int, *, unix_dir: str | os.PathLike[str] | None = None,
                local_port: int | None = None, backlog: int = DEFAULT_BACKLOG,
                node_wait: float = DEFAULT_NODE_WAIT) -> AbstractAsyncContextManager[Forward]:
        """A local endpoint that carries every connection to *host*:*port* on the tailnet,
        for code that opens its own sockets (database drivers, ``psql``, ``curl``)::

            async with node.forward("db", 5432) as fwd:
                conn = await psycopg.AsyncConnection.connect(host=fwd.host, port=fwd.port)

        By default the endpoint is a Unix socket ``.s.PGSQL.<port>`` in a new private
        directory (0700, made at *unix_dir* if given, which must not exist yet); connections
        from another user are refused. With *local_port* (0: any free port) it is a TCP port
        on 127.0.0.1 instead, which **every local process** can connect to.

        The endpoint exists exactly as long as the context (and the node); connections
        still open through it when it ends are reset. Bytes go between
        the endpoint and the tailnet inside the helper, never through Python. *host* is
        resolved by the node (never the system's DNS) when a connection arrives; a target
        off the tailnet, unreachable, or a node not running within *node_wait* seconds
        (a helper restarting) resets that connection.

        Raises:
            InvalidArgumentError: a bad host, port or option; *unix_dir* exists or cannot
                be made.
            AddressInUseError: *local_port* is taken.
        """
        return open_forward(self, host, port, unix_dir=unix_dir, local_port=local_port,
                            backlog=backlog, node_wait=node_wait)

    def socks5(self, *, unix_dir: str | os.PathLike[str] | None = None,
               local_port: int | None = None, backlog: int = DEFAULT_BACKLOG,
               node_wait: float = DEFAULT_NODE_WAIT) -> AbstractAsyncContextManager[Socks5Proxy]:
        """A SOCKS5 proxy (CONNECT with a fresh username/password) into the tailnet, for
        clients that speak SOCKS (httpx with ``socksio``, ``curl --socks5-hostname``)::

            async with node.socks5(local_port=0) as proxy:
                async with httpx.AsyncClient(proxy=proxy.url) as client: ...

        The endpoint is chosen as for :meth:`forward` (a Unix socket ``socks5.sock`` by
        default; httpx needs *local_port*). Names in requests are resolved by the node;
        a wrong credential is refused before anything is dialled, a target off the tailnet
        gets reply 2 (not allowed), an unknown tailnet name or unreachable node 4 (host
        unreachable), a refused port 5.
        """
        return open_socks5(self, unix_dir=unix_dir, local_port=local_port, backlog=backlog,
                           node_wait=node_wait)

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

    async def set_exit_node(self, peer: str | None) -> None:
        """Send traffic for addresses outside the tailnet through the exit node *peer* (a
        node's name or tailnet IP), or through none (None): then :meth:`dial` and
        :meth:`dial_udp` refuse such addresses again. The choice outlives helper restarts.

        Raises:
            DialError: *peer* is not on the tailnet.
            InvalidArgumentError: *peer* is this node, or not a name or IP.
        """
        if peer is not None:
            check_exit_node(peer)
        deadline, own = call_deadline(EXIT_NODE_BOUND)
        gen = await self._running_generation(own)
        await gen.request("set_exit_node",
                          {"exit_node": peer or "", "timeout_ms": ms_until(deadline)},
                          limit=limit_until(deadline))
        self._exit_node = peer

    def capture_pcap(self, path: str | os.PathLike[str], *,
                     format: CaptureFormat = "ip") -> AbstractAsyncContextManager[None]:
        """Capture the node's tailnet packets into the pcap file *path* while the ``async
        with`` block runs (tsnet's ``CapturePcap``)::

            async with node.capture_pcap("node.pcap"):
                ...

        ``format="ip"`` writes raw IP packets that tcpdump and Wireshark decode as they are;
        ``"tailscale"`` keeps tsnet's own records (with each packet's path through the node),
        for Wireshark with Tailscale's ``ts-dissector.lua``. The file is created 0600: it holds
        the plaintext of the node's traffic. A capture ends with the helper that made it (a
        restart ends it early).

        Raises:
            InvalidArgumentError: *path* cannot be written, or an unknown *format*.
        """
        return capture_to_file(self._live_generation, path, format)

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


