"""The public :class:`Node`, and the generations of helper processes behind it.

A *generation* is one helper process with its control channel: it says hello, starts tsnet,
comes up, re-creates the node's listeners, and from then on carries the node's traffic until it
dies. The :class:`~tsproc._supervisor.Supervisor` replaces a dead generation with a new one; the
node's identity lives in its state directory, so the new helper is the same tailnet node.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Final, final
from urllib.parse import urlsplit

import trio

from . import _protocol as proto
from ._helper import SECRET_ENV as _SECRET_ENV
from ._helper import HelperProcess, find_helper, helper_environment
from ._rpc import Reply, RpcChannel
from ._statedir import StateDir
from ._streams import ConnState, TailnetListener, TailnetPacketConn, TailnetStream
from ._supervisor import Generation, RestartPolicy, Supervisor
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
    HelperVersionError,
    InvalidArgumentError,
    NodeClosedError,
    NodeTimeoutError,
    ProtocolError,
    RemoteError,
    TsprocError,
    redact,
)

__all__ = ["Node"]

_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_TAG = re.compile(r"^tag:[A-Za-z0-9][A-Za-z0-9_-]*$")
_HELLO_TIMEOUT: Final = 10.0
# A request the helper neither answers nor fails within this is treated as a hang (the heartbeat
# normally notices much sooner).
_RPC_TIMEOUT: Final = 60.0
_DEFAULT_BACKLOG: Final = 128
_EVENT_BUFFER: Final = 256
# Connections held for listeners whose listen() answer the caller has not yet taken: at most one
# listener's full backlog in practice.
_MAX_ORPHANS: Final = 4096


def _check_port(port: object, what: str = "port") -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidArgumentError(f"{what} must be an integer from 1 to 65535, got {port!r}")
    return port


def _check_backlog(backlog: object) -> int:
    if isinstance(backlog, bool) or not isinstance(backlog, int) or not 1 <= backlog <= 4096:
        raise InvalidArgumentError(f"backlog must be an integer from 1 to 4096, got {backlog!r}")
    return backlog


def _check_host(host: object) -> str:
    if not isinstance(host, str) or not 0 < len(host) <= 253 or any(c.isspace() for c in host):
        raise InvalidArgumentError(f"host must be a tailnet name or IP address, got {host!r}")
    return host


def _check_timeout(timeout: object, what: str) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise InvalidArgumentError(f"{what} must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def _is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Generation:
    """One helper process, its control channel, and what flows through it."""

    def __init__(self, number: int, process: HelperProcess, node: Node) -> None:
        self.number = number
        self.process = process
        self._node = node
        self.rpc = RpcChannel(
            trio.socket.from_stdlib_socket(process.control),
            self._on_notification,
            on_reply=self._on_reply,
        )
        self.died = trio.Event()
        self._death_reason = ""
        self.conns: dict[int, ConnState] = {}
        self._replied_conns: dict[int, ConnState] = {}
        self.listener_by_id: dict[int, TailnetListener] = {}
        self.id_by_listener: dict[TailnetListener, int] = {}
        # `accepted` may overtake the `listen` response that names its listener.
        self._orphans: dict[int, list[TailnetStream]] = {}
        self._orphan_count = 0
        self._unclaimed: set[int] = set()  # listener ids closed because nobody took them
        self.hello: dict[str, Any] = {}
        self.is_up = False  # the helper has reported Running (up answered)
        self.packets: dict[int, TailnetPacketConn] = {}

    # -- Generation protocol (for the supervisor) --

    @property
    def death_reason(self) -> str:
        return self._death_reason

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def stderr_tail(self) -> Sequence[str]:
        return list(self.process.stderr_tail)

    # -- running --

    async def run(self, policy: RestartPolicy) -> None:
        """Watch the process, serve the channel and send heartbeats until the helper is gone."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_process)
            nursery.start_soon(self._serve)
            nursery.start_soon(self._heartbeat, policy)
            await self.died.wait()
            await self.process.exited.wait()
            nursery.cancel_scope.cancel()

    async def _watch_process(self) -> None:
        await self.process.watch()
        # Its last words (conn_end, say) may still be in the socket: let the reader drain them.
        with trio.move_on_after(2):
            await self.rpc.closed.wait()
        broken = self.rpc.broken
        if isinstance(broken, ProtocolError):
            # It broke the protocol and then exited (the channel closed on it): that, not
            # its exit status, is why it died, whichever of the two the host noticed first.
            self.die(f"protocol error: {broken}")
        else:
            self.die(self.process.describe_exit())

    async def _serve(self) -> None:
        try:
            await self.rpc.serve()
        except ProtocolError as exc:
            self.die(f"protocol error: {exc}")
            return
        # Channel closed: if the process is still running, it will be killed by die().
        with trio.move_on_after(1):
            await self.process.exited.wait()
        self.die(self.process.describe_exit() if self.process.returncode is not None
                 else "control channel closed")

    async def _heartbeat(self, policy: RestartPolicy) -> None:
        while not self.died.is_set():
            await trio.sleep(policy.heartbeat_interval)
            with trio.move_on_after(policy.heartbeat_timeout) as scope:
                try:
                    await self.rpc.request("ping", {})
                except RemoteError:
                    continue  # an answer, even "hello first", proves the helper is alive
                except TsprocError:
                    return  # the channel is gone: die() is already under way
            if scope.cancelled_caught:
                self.die(f"heartbeat missed: no answer within {policy.heartbeat_timeout:g} s")
                return

    def die(self, reason: str) -> None:
        """Declare this generation dead: kill the process, fail its connections. Idempotent."""
        if self.died.is_set():
            return
        self._death_reason = reason
        self.process.kill()
        self.rpc.close()
        for state in self.conns.values():
            state.finish(False, f"the helper died ({reason})")
        self.conns.clear()
        for streams in self._orphans.values():
            for stream in streams:
                stream.close_now()
        self._orphans.clear()
        self.packets.clear()  # their sockets read EOF from the dead helper's side
        for listener in self.id_by_listener:
            listener.drop_generation(self.number)
        self.died.set()
        self._node._on_down(self)

    async def request(self, method: str, params: dict[str, Any],
                      timeout: float = _RPC_TIMEOUT,
                      on_abandoned: Callable[[dict[str, Any]], None] | None = None) -> Reply:
        """rpc.request, with a deadline and with the process's exit status on failure."""
        try:
            with trio.fail_after(timeout):
                return await self.rpc.request(method, params, on_abandoned=on_abandoned)
        except trio.TooSlowError:
            raise NodeTimeoutError(
                f"the helper did not answer {method!r} within {timeout:g} s"
            ) from None
        except HelperDiedError:
            with trio.move_on_after(2):
                await self.process.exited.wait()
            why = self.death_reason or self.process.describe_exit()
            raise HelperDiedError(
                f"the helper died during {method!r}: {why}",
                returncode=self.process.returncode,
                stderr_tail=self.stderr_tail,
            ) from None

    # -- messages from the helper (called in the reader task; must not block) --

    def _on_reply(self, result: dict[str, Any]) -> None:
        conn = result.get("conn")
        if result.get("fd") is True and isinstance(conn, int):
            state = ConnState(conn, self.number)
            self.conns[conn] = state
            self._replied_conns[conn] = state

    def take_conn(self, reply: Reply) -> TailnetStream:
        """The stream for a reply that carried a connection's fd."""
        conn = reply.result.get("conn")
        if reply.fd is None or not isinstance(conn, int):
            if reply.fd is not None:
                os.close(reply.fd)
            raise ProtocolError("a dial result must carry a conn id and an fd")
        state = self._replied_conns.pop(conn)
        return TailnetStream(reply.fd, state, reply.result.get("local"),
                             reply.result.get("remote"), on_close=self.stream_closed)

    def _on_notification(self, msg: proto.Notification) -> None:
        p = msg.params
        if msg.method == "accepted":
            self._on_accepted(msg)
            return
        if msg.fd is not None:
            os.close(msg.fd)  # no other notification carries an fd: it is nobody's
        if msg.method == "conn_end":
            state = self.conns.pop(_int(p, "conn"), None)
            if state is not None:
                state.finish(p.get("clean") is True, str(p.get("error") or ""))
        elif msg.method == "listener_closed":
            listener = self.listener_by_id.pop(_int(p, "listener"), None)
            if listener is not None:
                self.id_by_listener.pop(listener, None)
                listener.close_now(f"the helper closed the listener: {p.get('reason', '')}")
        elif msg.method == "state":
            self._node._on_backend_state(str(p.get("state", "")), str(p.get("auth_url") or ""))

    def _on_accepted(self, msg: proto.Notification) -> None:
        if msg.fd is None:
            raise ProtocolError("accepted notification without its fd")
        p = msg.params
        try:
            conn, listener_id = _int(p, "conn"), _int(p, "listener")
            listener = self.listener_by_id.get(listener_id)
            if listener is None and self._orphan_count >= _MAX_ORPHANS:
                # Bounded in total, not per id: a broken helper could name any number of ids.
                raise ProtocolError("connections arrived for a listener that never appeared")
        except ProtocolError:
            os.close(msg.fd)
            raise
        if listener is None and listener_id in self._unclaimed:
            os.close(msg.fd)  # for a listener being closed: its caller stopped waiting
            return
        state = ConnState(conn, self.number)
        stream = TailnetStream(msg.fd, state, p.get("local"), p.get("remote"),
                               on_close=self.stream_closed)
        self.conns[conn] = state
        if listener is not None:
            listener.push(stream)
        else:
            self._orphans.setdefault(listener_id, []).append(stream)
            self._orphan_count += 1

    def close_unclaimed_listener(self, result: dict[str, Any]) -> None:
        """The answer to a listen whose caller stopped waiting (cancelled, timed out): the
        helper made a listener nobody will use, which would hold its port and a slot of the 256.
        Close it there, with whatever it has handed over already."""
        listener_id = result.get("listener")
        if isinstance(listener_id, bool) or not isinstance(listener_id, int):
            return
        self._unclaimed.add(listener_id)
        for stream in self._orphans.pop(listener_id, []):
            self._orphan_count -= 1
            stream.close_now()
        self.rpc.request_nowait("close_listener", {"listener": listener_id})

    def close_unclaimed_conn(self, result: dict[str, Any]) -> None:
        """The answer to a dial whose caller stopped waiting: its fd is closed already; tell
        the helper to drop the tailnet connection too, or it keeps it until the peer ends."""
        conn = result.get("conn")
        if isinstance(conn, bool) or not isinstance(conn, int):
            return
        self._replied_conns.pop(conn, None)
        self.conns.pop(conn, None)
        self.rpc.notify_nowait("close_conn", {"conn": conn})

    def add_listener(self, listener: TailnetListener, listener_id: int) -> None:
        self.listener_by_id[listener_id] = listener
        self.id_by_listener[listener] = listener_id
        for stream in self._orphans.pop(listener_id, []):
            self._orphan_count -= 1
            listener.push(stream)

    def remove_listener(self, listener: TailnetListener) -> int | None:
        """Forget *listener*; its helper id (to close in the helper), if it had one."""
        listener_id = self.id_by_listener.pop(listener, None)
        if listener_id is not None:
            self.listener_by_id.pop(listener_id, None)
        return listener_id

    def grant(self, listener: TailnetListener, stream: TailnetStream) -> None:
        listener_id = self.id_by_listener.get(listener)
        if listener_id is not None and stream._state.generation == self.number:
            self.rpc.notify_nowait("grant", {"listener": listener_id, "n": 1})

    def take_packet(self, reply: Reply) -> TailnetPacketConn:
        """The UDP socket for a reply that carried a packet socketpair's fd."""
        packet_id = reply.result.get("packet")
        if reply.fd is None or not isinstance(packet_id, int):
            if reply.fd is not None:
                os.close(reply.fd)
            raise ProtocolError("a UDP result must carry a packet id and an fd")

        def closed() -> None:
            if self.packets.pop(packet_id, None) is not None and not self.died.is_set():
                self.rpc.notify_nowait("close_conn", {"conn": packet_id})

        conn = TailnetPacketConn(reply.fd, reply.result.get("local"),
                                 reply.result.get("remote"), on_close=closed)
        self.packets[packet_id] = conn
        return conn

    def stream_closed(self, state: ConnState) -> None:
        # Closed before the tailnet side ended: tell the helper to drop the tailnet connection
        # now, instead of keeping it until the peer speaks again.
        if self.conns.pop(state.conn_id, None) is not None and not self.died.is_set():
            self.rpc.notify_nowait("close_conn", {"conn": state.conn_id})


def _int(params: dict[str, Any], key: str) -> int:
    value = params.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"field {key!r} must be an integer, got {value!r}")
    return value


@final
class EventStream:
    """An async iterator of a node's events; ends when the node closes.

    Use ``async with node.events() as events: async for event in events: …`` or just
    ``async for``; if the consumer falls more than 256 events behind, the oldest are dropped
    and :attr:`dropped` counts them.
    """

    def __init__(self, receive: trio.MemoryReceiveChannel[Event], node: Node) -> None:
        self._receive = receive
        self._node = node
        self.dropped = 0

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._receive.aclose()


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
        if not isinstance(hostname, str) or not _HOSTNAME.match(hostname):
            raise InvalidArgumentError(
                f"invalid hostname {hostname!r}: use 1 to 63 letters, digits and hyphens, "
                "not starting or ending with a hyphen"
            )
        if auth_key is not None and (not isinstance(auth_key, str) or not auth_key.strip()):
            raise InvalidArgumentError("auth_key must be a non-empty string or None")
        if control_url is not None:
            parts = urlsplit(control_url) if isinstance(control_url, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
                raise InvalidArgumentError(
                    f"control_url must be an http:// or https:// URL, got {control_url!r}"
                )
        self._tags = tuple(tags)
        for tag in self._tags:
            if not isinstance(tag, str) or not _TAG.match(tag):
                raise InvalidArgumentError(f"invalid tag {tag!r}: tags look like 'tag:web'")
        if up_timeout is not None:
            _check_timeout(up_timeout, "up_timeout")
        if memory_limit is not None and (
            isinstance(memory_limit, bool) or not isinstance(memory_limit, int)
            or memory_limit < 16 << 20
        ):
            raise InvalidArgumentError("memory_limit must be a number of bytes, at least 16 MiB")
        self.hostname = hostname
        self._auth_key = auth_key
        self.control_url = control_url
        self._requested_state_dir = state_dir
        self.ephemeral = ephemeral
        self._up_timeout = up_timeout
        self._wait_running_on_enter = wait_running
        self._policy = restart or RestartPolicy()
        self._memory_limit = memory_limit
        self._helper_env = dict(helper_env or {})
        for key, value in self._helper_env.items():
            if not isinstance(key, str) or not isinstance(value, str) or not key:
                raise InvalidArgumentError("helper_env maps names to strings")
            if key in _SECRET_ENV or redact(value) != value:
                raise InvalidArgumentError(
                    f"helper_env[{key!r}] looks like a credential: pass auth keys as auth_key, "
                    "never through the environment"
                )
        self._helper_path = helper_path

        self._state = NodeState.STARTING
        self._backend_state = ""
        self._auth_url = ""
        self._ips: tuple[IPAddress, ...] = ()
        self._generation: _Generation | None = None
        self._spawned: set[_Generation] = set()
        self._running = trio.Event()
        self._failure: TsprocError | None = None
        self._listeners: set[TailnetListener] = set()
        self._subscribers: list[tuple[trio.MemorySendChannel[Event], EventStream]] = []
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
        key = ", auth_key=<redacted>" if self._auth_key else ""
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
        path = find_helper(self._helper_path)
        self._state_dir = StateDir.acquire(
            self.hostname, self._requested_state_dir, temporary=self.ephemeral
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

    async def _start_generation(self, number: int, path: Path) -> Generation:
        assert self._nursery is not None and self._state_dir is not None
        env: dict[str, str] = {**self._helper_env, "TSPROC_HELPER_GENERATION": str(number)}
        if self.control_url and _is_loopback_url(self.control_url):
            # A local tailnet: no port mapping (it probes the LAN gateway), no LAN endpoints.
            env.update(TS_DISABLE_PORTMAPPER="1", TS_DEBUG_OMIT_LOCAL_ADDRS="1")
        if self._memory_limit is not None:
            env["GOMEMLIMIT"] = str(self._memory_limit)
        # tsnet's backend log is very chatty: only ask for it when someone will read it.
        verbose = logging.getLogger("tsproc.helper").isEnabledFor(logging.DEBUG)
        args = ["node", f"-tsnet-logs={'true' if verbose else 'false'}"]
        process = HelperProcess.spawn(path, args, helper_environment(env))
        gen = _Generation(number, process, self)
        self._spawned.add(gen)
        self._nursery.start_soon(self._run_generation, gen)
        try:
            reply = await gen.request("hello", {"protocol": proto.PROTOCOL_VERSION},
                                      timeout=_HELLO_TIMEOUT)
            gen.hello = reply.result
            if reply.result.get("protocol") != proto.PROTOCOL_VERSION:
                raise HelperVersionError(
                    f"helper {path} speaks protocol {reply.result.get('protocol')!r} "
                    f"(helper version {reply.result.get('helper_version')!r}), but this tsproc "
                    f"speaks protocol {proto.PROTOCOL_VERSION}: install a matching helper",
                    helper_protocol=reply.result.get("protocol"),
                    host_protocol=proto.PROTOCOL_VERSION,
                )
            params: dict[str, Any] = {
                "hostname": self.hostname,
                "state_dir": str(self._state_dir.path),
                "ephemeral": self.ephemeral,
                "tags": list(self._tags),
            }
            if self._auth_key:
                params["auth_key"] = self._auth_key
            if self.control_url:
                params["control_url"] = self.control_url
            await gen.request("start", params)
            if self._wait_running_on_enter or number > 1:
                await self._up(gen)
            else:
                self._nursery.start_soon(self._up_later, gen)
            for listener in list(self._listeners):
                method, listen_params = listener.spec
                reply = await gen.request(method, listen_params)
                gen.add_listener(listener, _int(reply.result, "listener"))
        except BaseException as exc:
            gen.die(f"start failed: {type(exc).__name__}")
            raise
        return gen

    async def _run_generation(self, gen: _Generation) -> None:
        try:
            await gen.run(self._policy)
        finally:
            self._spawned.discard(gen)

    async def _up(self, gen: _Generation) -> None:
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

    async def _up_later(self, gen: _Generation) -> None:
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

    def _on_running(self, generation: Generation, previous: Generation | None) -> None:
        assert isinstance(generation, _Generation)
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
        for send, _ in self._subscribers:
            send.close()
        self._subscribers.clear()

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
        for send, stream in list(self._subscribers):
            try:
                send.send_nowait(event)
            except trio.WouldBlock:
                stream.dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove((send, stream))

    def events(self) -> EventStream:
        """Subscribe to this node's events from now on (state changes, auth URLs, restarts,
        crash loop). The iterator ends when the node closes."""
        send, receive = trio.open_memory_channel[Event](_EVENT_BUFFER)
        stream = EventStream(receive, self)
        if self._state is NodeState.CLOSED:
            send.close()
        else:
            self._subscribers.append((send, stream))
        return stream

    # -- using the node --

    async def _running_generation(self, deadline: float) -> _Generation:
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

    async def listen(self, port: int, *, backlog: int = _DEFAULT_BACKLOG) -> TailnetListener:
        """Listen for tailnet TCP connections to *port* on this node's addresses.

        The listener survives helper restarts. Use it with :func:`trio.serve_listeners`.

        Raises:
            InvalidArgumentError: bad port or backlog.
            AddressInUseError: this node already listens on that port.
            LimitError: the node already has 256 listeners.
        """
        _check_port(port)
        params = {"network": "tcp", "port": port, "backlog": _check_backlog(backlog)}
        return await self._open_listener("listen", params, port, backlog)

    async def listen_tls(self, port: int, *, backlog: int = _DEFAULT_BACKLOG) -> TailnetListener:
        """Listen for TLS connections to *port*, with a certificate for this node's MagicDNS
        name issued through the tailnet. The helper terminates TLS: streams carry plaintext.

        Needs a tailnet with MagicDNS and HTTPS certificates enabled in its admin console
        (see :meth:`cert_domains`).

        Raises:
            TlsUnavailableError: the tailnet issues no certificates to this node.
        """
        _check_port(port)
        params = {"port": port, "backlog": _check_backlog(backlog)}
        return await self._open_listener("listen_tls", params, port, backlog)

    async def listen_funnel(self, port: int, *, funnel_only: bool = False,
                            backlog: int = _DEFAULT_BACKLOG) -> TailnetListener:
        """Listen on *port* for connections from the public internet through Tailscale Funnel
        (and from the tailnet, unless *funnel_only*). TLS is terminated in the helper.

        Needs HTTPS certificates and a tailnet policy that grants this node the ``funnel``
        attribute; Funnel serves ports 443, 8443 and 10000.

        Raises:
            TlsUnavailableError: the tailnet issues no certificates to this node.
            FunnelUnavailableError: the tailnet does not allow Funnel here.
        """
        _check_port(port)
        params = {"port": port, "backlog": _check_backlog(backlog),
                  "funnel_only": bool(funnel_only)}
        return await self._open_listener("listen_funnel", params, port, backlog)

    async def listen_any_port(self, *, backlog: int = _DEFAULT_BACKLOG) -> TailnetListener:
        """Accept TCP connections to every port of this node that no other listener holds
        (tsnet's fallback TCP handler). Each stream's ``local_addr`` is the address the peer
        dialled, so a handler can dispatch on the destination port.

        When ``backlog`` connections wait unaccepted, further ones are refused (reset).
        """
        params = {"backlog": _check_backlog(backlog)}
        return await self._open_listener("listen_any_port", params, 0, backlog)

    async def _open_listener(self, method: str, params: dict[str, Any], port: int,
                             backlog: int) -> TailnetListener:
        gen = await self._running_generation(trio.current_time() + _RPC_TIMEOUT)
        reply = await gen.request(method, params, on_abandoned=gen.close_unclaimed_listener)
        listener = TailnetListener(port, backlog, self._on_accept, self._on_listener_close,
                                   spec=(method, params))
        self._listeners.add(listener)
        gen.add_listener(listener, _int(reply.result, "listener"))
        return listener

    async def listen_packet(self, port: int = 0) -> TailnetPacketConn:
        """A UDP socket on *port* of this node's tailnet IPv4 address (0: any free port).

        Raises:
            AddressInUseError: the port is taken.
        """
        if port != 0:
            _check_port(port)
        gen = await self._running_generation(trio.current_time() + _RPC_TIMEOUT)
        reply = await gen.request("listen_packet", {"port": port})
        return gen.take_packet(reply)

    async def dial_udp(self, host: str, port: int, *, timeout: float = 30.0) -> TailnetPacketConn:
        """A UDP socket connected to *host*:*port* on the tailnet (use ``send``/``receive``).

        Raises:
            DialError: *host* is not on the tailnet.
        """
        _check_host(host)
        _check_port(port)
        timeout = _check_timeout(timeout, "timeout")
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
        _check_host(peer)
        timeout = _check_timeout(timeout, "timeout")
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

    async def _release_listener(self, gen: _Generation, listener_id: int,
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
        _check_host(host)
        _check_port(port)
        timeout = _check_timeout(timeout, "timeout")
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
        gen = await self._running_generation(trio.current_time() + _RPC_TIMEOUT)
        reply = await gen.request("whois", {"addr": text})
        return WhoIs.from_wire(reply.result)

    async def logout(self) -> None:
        """Log the node out of the tailnet (its saved identity becomes useless)."""
        gen = await self._live_generation()
        await gen.request("logout", {})

    async def _live_generation(self) -> _Generation:
        return await self._running_generation(trio.current_time() + _RPC_TIMEOUT)


