"""The public :class:`Node`: its life cycle, its state and the calls an application makes.

The helper processes behind it are :class:`~tsproc._generation.Generation` objects, started and
replaced by the :class:`~tsproc._supervisor.Supervisor`; the node's identity lives in its state
directory, so a new helper is the same tailnet node. Arguments are checked by
:class:`~tsproc._config.NodeConfig`; events fan out through :class:`~tsproc._events.EventHub`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, final

import trio

from ._config import (
    DEFAULT_BACKLOG,
    NodeConfig,
    check_backlog,
    check_host,
    check_port,
    check_timeout,
)
from ._events import EventHub, EventStream
from ._generation import RPC_TIMEOUT, Generation, int_field
from ._helper import HelperProcess, find_helper
from ._packet import TailnetPacketConn
from ._statedir import StateDir
from ._streams import TailnetListener, TailnetStream
from ._supervisor import Generation as SupervisedGeneration
from ._supervisor import RestartPolicy, Supervisor
from ._types import (
    AuthUrlEvent,
    CrashLoopEvent,
    Event,
    HelperRestartedEvent,
    IPAddress,
    NodeState,
    PingResult,
    StateEvent,
    Status,
    WhoIs,
)
from .errors import (
    HelperDiedError,
    InvalidArgumentError,
    NodeClosedError,
    NodeTimeoutError,
    TsprocError,
)

__all__ = ["EventStream", "Node"]


@final
class Node:
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
    ) -> None:
        self._config = NodeConfig(
            hostname, auth_key=auth_key, control_url=control_url, state_dir=state_dir,
            ephemeral=ephemeral, tags=tags, up_timeout=up_timeout, wait_running=wait_running,
            restart=restart, memory_limit=memory_limit, helper_env=helper_env,
            helper_path=helper_path,
        )
        self.hostname = hostname
        self.control_url = control_url
        self.ephemeral = ephemeral
        self._up_timeout = up_timeout
        self._wait_running_on_enter = wait_running
        self._policy = self._config.policy

        self._state = NodeState.STARTING
        self._backend_state = ""
        self._auth_url = ""
        self._ips: tuple[IPAddress, ...] = ()
        self._generation: Generation | None = None
        self._spawned: set[Generation] = set()
        self._running = trio.Event()
        self._failure: TsprocError | None = None
        self._listeners: set[TailnetListener] = set()
        self._events = EventHub()
        self._stack: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None
        self._supervisor_scope = trio.CancelScope()
        self._background_scope = trio.CancelScope()
        self._supervisor: Supervisor | None = None
        self._state_dir: StateDir | None = None
        self._entered = False
        self._closing = False

    def __repr__(self) -> str:
        ips = ",".join(str(ip) for ip in self._ips) or "no IP yet"
        key = ", auth_key=<redacted>" if self._config.auth_key else ""
        return f"<tsproc.Node {self.hostname!r} {self._state.value} {ips}{key}>"

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
        path = find_helper(self._config.helper_path)
        self._state_dir = StateDir.acquire(
            self.hostname, self._config.state_dir, temporary=self.ephemeral
        )
        stack = AsyncExitStack()
        try:
            outer = await stack.enter_async_context(trio.open_nursery())
            # Background tasks live in an inner nursery with a cancel scope of their own: the
            # outer nursery's scope also covers the caller's `async with` body, which closing
            # the node must never cancel.
            self._nursery = await outer.start(self._run_background)
            self._supervisor = Supervisor(
                self._policy,
                lambda number: self._start_generation(number, path),
                self._on_running,
            )
            await self._nursery.start(self._supervise)
            if self._wait_running_on_enter:
                await self.wait_running()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._shutdown()
            await stack.__aexit__(None, None, None)
            raise
        self._stack = stack
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

    async def wait_running(self, timeout: float | None = None) -> None:
        """Wait until the node is Running on the tailnet.

        Raises:
            NodeTimeoutError: not running within *timeout* seconds.
            HelperCrashLoop (or the error that failed the node), NodeClosedError.
        """
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        await self._running_generation(deadline)

    async def _run_background(self, *, task_status: trio.TaskStatus[trio.Nursery]) -> None:
        with self._background_scope:
            async with trio.open_nursery() as nursery:
                task_status.started(nursery)
                await trio.sleep_forever()

    async def _supervise(self, *, task_status: trio.TaskStatus[None]) -> None:
        assert self._supervisor is not None
        with self._supervisor_scope:
            try:
                await self._supervisor.run(task_status=task_status)
            except TsprocError as exc:
                if self._generation is None:  # never started: __aenter__ raises it
                    raise
                # Background failure: never raise into the application's nursery; fail the node.
                self._failure = exc
                self._set_state(NodeState.FAILED)
                self._emit(CrashLoopEvent(str(exc)))
                self._running.set()

    async def _start_generation(self, number: int, path: Path) -> SupervisedGeneration:
        assert self._nursery is not None and self._state_dir is not None
        config = self._config
        process = HelperProcess.spawn(path, config.helper_args(),
                                      config.helper_environment(number))
        gen = Generation(number, process, self._on_down, self._on_backend_state)
        self._spawned.add(gen)
        self._nursery.start_soon(self._run_generation, gen)
        try:
            await gen.handshake(path)
            await gen.request("start", config.start_params(self._state_dir.path))
            if self._wait_running_on_enter or number > 1:
                await self._up(gen)
            else:
                self._nursery.start_soon(self._up_later, gen)
            for listener in list(self._listeners):
                method, listen_params = listener.spec
                reply = await gen.request(method, listen_params)
                gen.add_listener(listener, int_field(reply.result, "listener"))
        except BaseException as exc:
            gen.die(f"start failed: {type(exc).__name__}")
            raise
        return gen

    async def _run_generation(self, gen: Generation) -> None:
        try:
            await gen.run(self._policy)
        finally:
            self._spawned.discard(gen)

    async def _up(self, gen: Generation) -> None:
        while True:
            slice_s = self._up_timeout if self._up_timeout is not None else 30.0
            try:
                reply = await gen.request("up", {"timeout_ms": int(slice_s * 1000)},
                                          timeout=slice_s + 10)
            except NodeTimeoutError:
                if self._up_timeout is not None:
                    raise
                continue
            except TsprocError as exc:
                if self._up_timeout is None and getattr(exc, "code", "") == "needs_login":
                    continue
                raise
            status = Status.from_wire(reply.result, pid=gen.process.pid, restarts=0)
            self._ips = tuple(sorted(status.tailscale_ips, key=lambda ip: ip.version))
            gen.is_up = True
            return

    async def _up_later(self, gen: Generation) -> None:
        try:
            await self._up(gen)
        except TsprocError as exc:
            self._failure = exc
            self._set_state(NodeState.FAILED)
            self._running.set()
            return
        # If the supervisor has not adopted this generation yet, _on_running will see is_up.
        if not gen.died.is_set() and self._generation is gen:
            self._set_state(NodeState.RUNNING)
            self._running.set()

    def _on_running(self, generation: SupervisedGeneration,
                    previous: SupervisedGeneration | None) -> None:
        assert isinstance(generation, Generation)
        self._generation = generation
        if generation.is_up:
            self._set_state(NodeState.RUNNING)
            self._running.set()
        if previous is not None:
            self._emit(HelperRestartedEvent(generation.number, previous.returncode,
                                            previous.death_reason))

    def _on_down(self, generation: Generation) -> None:
        """Called by a generation the moment it dies."""
        if self._closing or generation is not self._generation:
            return
        if self._state is NodeState.RUNNING:
            self._running = trio.Event()
            self._set_state(NodeState.RESTARTING)

    async def _shutdown(self) -> None:
        if self._state is NodeState.CLOSED:
            return
        self._closing = True
        self._supervisor_scope.cancel()
        for listener in list(self._listeners):
            listener.close_now("the node was closed")
        gen = self._generation
        if gen is not None and not gen.died.is_set():
            with trio.move_on_after(self._policy.shutdown_grace):
                with contextlib.suppress(TsprocError):
                    await gen.request("shutdown", {}, timeout=self._policy.shutdown_grace)
                await gen.process.exited.wait()
            if not gen.process.exited.is_set():
                await gen.process.terminate(self._policy.shutdown_grace)
        # Every helper ever started (a failed start's too) is killed and reaped before the
        # background tasks that watch them go away.
        for spawned in list(self._spawned):
            spawned.die("node closed")
        with trio.move_on_after(self._policy.shutdown_grace):
            for spawned in list(self._spawned):
                await spawned.process.exited.wait()
        self._background_scope.cancel()
        if self._state_dir is not None:
            self._state_dir.release()
        self._running.set()
        self._set_state(NodeState.CLOSED)
        self._events.close()

    # -- state and events --

    def _set_state(self, state: NodeState) -> None:
        if state is not self._state and self._state is not NodeState.CLOSED:
            self._state = state
            self._emit(StateEvent(state, self._backend_state))

    def _on_backend_state(self, backend_state: str, auth_url: str) -> None:
        self._backend_state = backend_state
        if auth_url and auth_url != self._auth_url:
            self._auth_url = auth_url
            self._emit(AuthUrlEvent(auth_url))
        if backend_state == "Running":
            self._auth_url = ""
        self._emit(StateEvent(self._state, backend_state))

    def _emit(self, event: Event) -> None:
        self._events.emit(event)

    def events(self) -> EventStream:
        """Subscribe to this node's events from now on (state changes, auth URLs, restarts,
        crash loop). The iterator ends when the node closes."""
        return self._events.subscribe(self)

    # -- using the node --

    async def _running_generation(self, deadline: float) -> Generation:
        while True:
            if self._failure is not None:
                raise self._failure
            if self._closing or self._state is NodeState.CLOSED:
                raise NodeClosedError(f"node {self.hostname!r} is closed")
            gen = self._generation
            # Invariant: RUNNING means the current generation is alive (die() resets it).
            if self._state is NodeState.RUNNING and gen is not None:
                return gen
            with trio.move_on_at(deadline):
                await self._running.wait()
                continue
            raise NodeTimeoutError(
                f"node {self.hostname!r} is not running ({self._state.value}); gave up waiting"
            )

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
        gen = await self._running_generation(trio.current_time() + RPC_TIMEOUT)
        reply = await gen.request(method, params, on_abandoned=gen.close_unclaimed_listener)
        listener = TailnetListener(port, backlog, self._on_accept, self._on_listener_close,
                                   spec=(method, params))
        self._listeners.add(listener)
        gen.add_listener(listener, int_field(reply.result, "listener"))
        return listener

    async def listen_packet(self, port: int = 0) -> TailnetPacketConn:
        """A UDP socket on *port* of this node's tailnet IPv4 address (0: any free port).

        Raises:
            AddressInUseError: the port is taken.
        """
        if port != 0:
            check_port(port)
        gen = await self._running_generation(trio.current_time() + RPC_TIMEOUT)
        reply = await gen.request("listen_packet", {"port": port})
        return gen.take_packet(reply)

    async def dial_udp(self, host: str, port: int, *, timeout: float = 30.0) -> TailnetPacketConn:
        """A UDP socket connected to *host*:*port* on the tailnet (use ``send``/``receive``).

        Raises:
            DialError: *host* is not on the tailnet.
        """
        check_host(host)
        check_port(port)
        timeout = check_timeout(timeout, "timeout")
        deadline = trio.current_time() + timeout
        gen = await self._running_generation(deadline)
        remaining = max(0.001, deadline - trio.current_time())
        reply = await gen.request(
            "dial_udp", {"host": host, "port": port, "timeout_ms": max(1, int(remaining * 1000))},
            timeout=remaining + 5,
        )
        return gen.take_packet(reply)

    async def ping(self, peer: str, *, timeout: float = 10.0) -> PingResult:
        """Ping *peer* (a tailnet name or IP) with TSMP, through WireGuard: the latency, and
        whether the path is direct or relayed through DERP.

        Raises:
            NotFoundError: *peer* is not on the tailnet.
            NodeTimeoutError: no answer within *timeout*.
        """
        check_host(peer)
        timeout = check_timeout(timeout, "timeout")
        gen = await self._running_generation(trio.current_time() + timeout)
        reply = await gen.request(
            "ping_peer", {"host": peer, "timeout_ms": max(1, int(timeout * 1000))},
            timeout=timeout + 5,
        )
        return PingResult.from_wire(reply.result)

    async def cert_domains(self) -> tuple[str, ...]:
        """The DNS names the tailnet issues HTTPS certificates for to this node (empty when
        HTTPS is not enabled: then :meth:`listen_tls` and :meth:`listen_funnel` fail)."""
        gen = await self._live_generation()
        reply = await gen.request("cert_domains", {})
        domains = reply.result.get("domains")
        return tuple(str(d) for d in domains) if isinstance(domains, list) else ()

    def _on_accept(self, listener: TailnetListener, stream: TailnetStream) -> None:
        gen = self._generation
        if gen is not None and not gen.died.is_set():
            gen.grant(listener, stream)

    def _on_listener_close(self, listener: TailnetListener, released: trio.Event | None) -> None:
        self._listeners.discard(listener)
        gen = self._generation
        listener_id = None
        if gen is not None and not gen.died.is_set():
            listener_id = gen.remove_listener(listener)
        if listener_id is None or gen is None:
            if released is not None:
                released.set()
        elif released is None or self._nursery is None:
            gen.rpc.request_nowait("close_listener", {"listener": listener_id})
        else:
            self._nursery.start_soon(self._release_listener, gen, listener_id, released)

    async def _release_listener(self, gen: Generation, listener_id: int,
                                released: trio.Event) -> None:
        try:
            await gen.request("close_listener", {"listener": listener_id}, timeout=5)
        except TsprocError:
            pass  # gone already, or the helper died: either way the port is free
        finally:
            released.set()

    async def dial(self, host: str, port: int, *, timeout: float = 30.0) -> TailnetStream:
        """Open a TCP connection to *host*:*port* over the tailnet.

        *host* is a MagicDNS name (short like ``"db"`` or full), or a tailnet IP. During a helper
        restart the dial waits for the node, within *timeout*.

        Raises:
            InvalidArgumentError: bad host, port or timeout.
            DialError: unknown host, refused, unreachable.
            NodeTimeoutError: not connected within *timeout*.
        """
        check_host(host)
        check_port(port)
        timeout = check_timeout(timeout, "timeout")
        deadline = trio.current_time() + timeout
        while True:
            gen = await self._running_generation(deadline)
            remaining = max(0.001, deadline - trio.current_time())
            try:
                reply = await gen.request(
                    "dial",
                    {"network": "tcp", "host": host, "port": port,
                     "timeout_ms": max(1, int(remaining * 1000))},
                    timeout=remaining + 5,
                    on_abandoned=gen.close_unclaimed_conn,
                )
            except HelperDiedError:
                if trio.current_time() >= deadline:
                    raise
                continue  # the helper died mid-dial: the next one will try again
            return gen.take_conn(reply)

    async def status(self) -> Status:
        """The node's current status: backend state, addresses, peers, helper figures."""
        gen = await self._live_generation()
        reply = await gen.request("status", {})
        restarts = self._supervisor.restarts if self._supervisor else 0
        return Status.from_wire(reply.result, pid=gen.process.pid, restarts=restarts)

    async def whois(self, addr: str | tuple[str, int] | IPAddress) -> WhoIs:
        """Who is behind a tailnet address: the peer node and its user.

        *addr* is an IP, ``"ip:port"``, or a ``(ip, port)`` tuple such as
        ``stream.remote_addr``.

        Raises:
            NotFoundError: no tailnet node has that address.
        """
        if isinstance(addr, tuple):
            ip, port = addr
            text = f"[{ip}]:{port}" if ":" in str(ip) else f"{ip}:{port}"
        else:
            text = str(addr)
        if not text:
            raise InvalidArgumentError("whois needs an address")
        gen = await self._running_generation(trio.current_time() + RPC_TIMEOUT)
        reply = await gen.request("whois", {"addr": text})
        return WhoIs.from_wire(reply.result)

    async def logout(self) -> None:
        """Log the node out of the tailnet (its saved identity becomes useless)."""
        gen = await self._live_generation()
        await gen.request("logout", {})

    async def _live_generation(self) -> Generation:
        return await self._running_generation(trio.current_time() + RPC_TIMEOUT)


