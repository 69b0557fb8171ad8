"""One generation of a node: one helper process, its control channel, and what flows through it.

A *generation* says hello, starts tsnet, comes up, re-creates the node's listeners, and from then
on carries the node's traffic until it dies. It owns the tables that map the helper's conn and
listener ids to the host's streams and listeners; :meth:`Generation.die` fails them all at once.
The :class:`~tsproc._core.supervisor.Supervisor` replaces a dead generation with a new one.

Every object the helper makes for a request (a connection, a listener, a UDP socket) is
registered by the request's result handler, in the reader task, in order with the messages that
follow its answer (``accepted``, ``conn_end``): see :meth:`~tsproc._wire.rpc.RpcChannel.request`.
:meth:`Generation.request` is where what the channel raises becomes what the node's caller sees.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar, overload

import trio

from .._child.helper import HelperProcess
from .._util import is_int
from .._wire import protocol as proto
from .._wire.rpc import Disposable, Reply, RequestHandler, RpcChannel
from ..errors import (
    HelperDiedError,
    HelperVersionError,
    NeedsLoginError,
    NodeTimeoutError,
    ProtocolError,
    RemoteError,
    TsprocError,
    _RemoteTimeoutError,
)
from .config import CALL_BOUND, NodeConfig, limit_until, ms_until
from .packet import TailnetPacketConn
from .streams import ConnState, TailnetListener, TailnetStream
from .supervisor import RestartPolicy
from .types import Addr, IPAddress, Status, WhoIs

__all__ = ["RPC_TIMEOUT", "Generation", "int_field"]

_HELLO_TIMEOUT: Final = 10.0
# A request that does not wait in the helper (start, listen, close_listener …), neither answered
# nor failed within this, is treated as a hang (the heartbeat normally notices much sooner).
# Requests that wait in the helper carry the caller's deadline instead (_config.call_deadline).
RPC_TIMEOUT: Final = 60.0
# The heartbeat's wait is measured in slices of this (_answered_within).
_SLICE: Final = 0.1
# A helper given the time left to the caller's deadline (ms_until: whole milliseconds, rounded
# down) may answer `timeout` a moment before that deadline's cancel scope fires. The caller
# then gets the scope's own outcome (trio.TooSlowError, or nothing after move_on_after) as
# NodeTimeoutError promises, not a NodeTimeoutError that one millisecond of rounding let
# through first (test_services saw it once in a loop of fail_after(3) dials).
_DEADLINE_SLACK: Final = 0.05
# How long closing a listener waits for the helper to confirm it.
_CLOSE_LISTENER_TIMEOUT: Final = 5.0

_log = logging.getLogger("tsproc")

T = TypeVar("T", bound=Disposable)


class Generation:
    """One helper process, its control channel, and what flows through it."""

    def __init__(self, number: int, process: HelperProcess,
                 on_down: Callable[[Generation], None],
                 on_backend_state: Callable[[str, str, tuple[str, ...] | None], None], *,
                 whois: Callable[[Addr], Awaitable[WhoIs]] | None = None,
                 on_request: RequestHandler | None = None) -> None:
        self.number = number
        self._whois = whois  # the node's, for TailnetStream.whois()
        self.process = process
        self._on_down = on_down
        self._on_backend_state = on_backend_state
        self.rpc = RpcChannel(trio.socket.from_stdlib_socket(process.control),
                              self._on_notification, self._channel_broke, on_request)
        self.died = trio.Event()
        self._death_reason = ""
        # Why the host killed the helper, if it did (_give_up): the death's reason, not the
        # SIGKILL that the process watcher sees.
        self._kill_reason = ""
        self.conns: dict[int, ConnState] = {}
        # The four-tuples of the connections open when this helper died: their peers may still
        # hold them, and the next helper makes them reset (NodeLifecycle, reset_peers).
        self.orphaned: list[str] = []
        # Connections the application closed, by conn id: (heartbeats sent by then,
        # four-tuple). The helper may have died before it acted on the close (the application
        # closes as soon as its fd breaks, which can be before the host learns of the death;
        # or its FIN was still to go out after the peer's), so they stay orphan candidates
        # until a heartbeat sent after the close is answered.
        self._closing: dict[int, tuple[int, str]] = {}
        self._pings = 0
        # Reset streams' fds, kept open until the helper's conn_reset (TailnetStream.reset).
        self._held: dict[int, int] = {}
        self.listener_by_id: dict[int, TailnetListener] = {}
        self.id_by_listener: dict[TailnetListener, int] = {}
        # Connections accepted per listener id and not yet granted back (see grant).
        self._ungranted: dict[int, int] = {}
        # Listener ids this host closed whose close_listener the helper has not answered yet:
        # an `accepted` for one of them may still come (its connection is dropped). Any other
        # unknown id is a protocol error.
        self._retired: set[int] = set()
        self.packets: dict[int, TailnetPacketConn] = {}
        self.is_up = False  # the helper has reported Running (up answered)
        self._nursery: trio.Nursery | None = None

    # -- Generation protocol (for the supervisor) --

    @property
    def pid(self) -> int:
        return self.process.pid

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
            self._nursery = nursery
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
            sent = self._pings
            self._pings += 1
            answered, alive = trio.Event(), [True]
            assert self._nursery is not None
            self._nursery.start_soon(self._ping, answered, alive)
            if not await _answered_within(answered, policy.heartbeat_timeout):
                await self._give_up(
                    f"heartbeat missed: no answer within {policy.heartbeat_timeout:g} s")
                return
            if not alive[0]:
                return  # the channel is gone: die() is already under way
            # Answered: the helper read every close_conn sent before this ping.
            self._closing = {conn: v for conn, v in self._closing.items() if v[0] > sent}

    async def _ping(self, answered: trio.Event, alive: list[bool]) -> None:
        """One heartbeat: sets *answered* once the helper answered or the channel ended
        (then *alive* becomes [False])."""
        try:
            await self.rpc.request("ping", {})
        except RemoteError:
            pass  # an answer, even "hello first", proves the helper is alive
        except TsprocError:
            alive[0] = False
        answered.set()

    async def _give_up(self, reason: str) -> None:
        """Kill a helper the host gave up on, read what it had already written, then die().

        What the helper wrote before it stopped answering may still be in the socket, an
        ``accepted`` among it; the helper strikes a connection from its own record once that
        notification is written (helper/internal/connrecord), so if the host dropped it unread
        the connection's four-tuple would be in neither, and its peer would never be reset. The
        kill ends the channel: the reader reads to end of stream, and die() then counts those
        connections among the orphaned. The reason is recorded first, so that it, not the
        exit status the kill causes, is what die() says, whoever calls it.
        """
        self._kill_reason = reason
        self.process.kill()
        with trio.move_on_after(2):
            await self.rpc.closed.wait()
        self.die(reason)

    def _channel_broke(self, error: BaseException) -> None:
        """The channel ends: called before its socket closes. If the host gave up on the
        helper (it broke the protocol), the helper is killed *now*, before it can read EOF.

        A helper that reads EOF takes it for "the host is gone" (docs/protocol.md §11) and closes
        tsnet, and tsnet logs an ephemeral node out — deleting its key from the state dir.
        The helper that replaces this one would then register as a new node, with new IPs. On
        a loaded machine the helper has the time to do it before die() runs: the reader task
        yields before it raises the ProtocolError to _serve.
        """
        if isinstance(error, ProtocolError):
            self.process.kill()

    def die(self, reason: str) -> None:
        """Declare this generation dead: kill the process, fail its connections. Idempotent."""
        if self.died.is_set():
            return
        self._death_reason = self._kill_reason or reason
        self.process.kill()  # before the channel closes: see _channel_broke
        self.rpc.close()
        self.orphaned = [state.four_tuple for state in self.conns.values() if state.four_tuple]
        self.orphaned += [four_tuple for _, four_tuple in self._closing.values()]
        self._closing.clear()
        for state in self.conns.values():
            state.finish(False, f"the helper died ({reason})")
        self.conns.clear()
        for held in self._held.values():
            os.close(held)
        self._held.clear()
        self.packets.clear()  # their sockets read EOF from the dead helper's side
        for listener in self.id_by_listener:
            listener.drop_generation(self.number)
        self.died.set()
        self._on_down(self)

    @overload
    async def request(self, method: str, params: dict[str, Any], *,
                      limit: float = ..., fd: int | None = None) -> Reply: ...

    @overload
    async def request(self, method: str, params: dict[str, Any], *,
                      on_result: Callable[[Reply], T], limit: float = ...,
                      fd: int | None = None) -> T: ...

    async def request(self, method: str, params: dict[str, Any], *,
                      on_result: Callable[[Reply], Disposable] | None = None,
                      limit: float = RPC_TIMEOUT, fd: int | None = None) -> Disposable:
        """``rpc.request`` (see there for *on_result*), waiting at most *limit* seconds.

        This is the one place where what the channel raises becomes what the node's caller
        sees: a helper that does not answer within *limit* is a local NodeTimeoutError; a
        channel that ended is a HelperDiedError with the process's exit status and last log
        lines; the helper's own error answers pass through as their RemoteError subclasses,
        but for a ``timeout`` that the caller's own deadline is about to end anyway (see
        _DEADLINE_SLACK): that deadline's cancel scope ends the call, as documented.
        """
        try:
            with trio.fail_after(limit):
                if on_result is None:
                    return await self.rpc.request(method, params, fd=fd)
                return await self.rpc.request(method, params, on_result=on_result, fd=fd)
        except _RemoteTimeoutError:
            caller = trio.current_effective_deadline()
            if caller - trio.current_time() <= _DEADLINE_SLACK:
                await trio.sleep_until(caller)  # raises Cancelled: the caller's scope ends it
            raise
        except trio.TooSlowError:
            raise NodeTimeoutError(
                f"the helper did not answer {method!r} within {limit:g} s"
            ) from None
        except HelperDiedError:
            # Its exit status says more than "channel closed": give it a moment to be reaped.
            with trio.move_on_after(2):
                await self.process.exited.wait()
            why = self.death_reason or self.process.describe_exit()
            raise HelperDiedError(
                f"the helper died during {method!r}: {why}",
                returncode=self.process.returncode,
                stderr_tail=self.stderr_tail,
            ) from None

    async def handshake(self, path: Path) -> None:
        """Say hello and check that the helper speaks this library's protocol version.

        Raises:
            HelperVersionError: it speaks another version.
        """
        reply = await self.request("hello", {"protocol": proto.PROTOCOL_VERSION},
                                   limit=_HELLO_TIMEOUT)
        if reply.result.get("protocol") != proto.PROTOCOL_VERSION:
            raise HelperVersionError(
                f"helper {path} speaks protocol {reply.result.get('protocol')!r} "
                f"(helper version {reply.result.get('helper_version')!r}), but this tsproc "
                f"speaks protocol {proto.PROTOCOL_VERSION}: install a matching helper",
                helper_protocol=reply.result.get("protocol"),
                host_protocol=proto.PROTOCOL_VERSION,
            )

    async def start(self, config: NodeConfig, state_dir: Path) -> None:
        """Start tsnet with the node's settings (its auth key travels only here)."""
        await self.request("start", config.start_params(state_dir))

    async def up(self, up_timeout: float | None) -> tuple[IPAddress, ...]:
        """Wait until the node is Running: its tailnet IPs, IPv4 first. With *up_timeout*
        None it waits as long as it takes (a person logging in), in slices of 30 s.

        Raises:
            NodeTimeoutError, NeedsLoginError: not running within *up_timeout*.
            AuthError: the control server refused the key.
        """
        slice_s = up_timeout if up_timeout is not None else 30.0
        while True:
            try:
                reply = await self.request("up", {"timeout_ms": int(slice_s * 1000)},
                                           limit=slice_s + 10)
            except (NodeTimeoutError, NeedsLoginError):
                if up_timeout is not None:
                    raise
                continue  # no deadline: a person may still be logging in
            status = Status.from_wire(reply.result, pid=self.process.pid, restarts=0)
            self.is_up = True
            return tuple(sorted(status.tailscale_ips, key=lambda ip: ip.version))

    async def reset_peers(self, four_tuples: list[str]) -> None:
        """Have the peers of a dead helper's connections reset them now (docs/protocol.md
        §4), rather than at their keepalive, hours later. A refusal is only logged: the
        connections were already broken on this side."""
        try:
            await self.request("reset_peers", {"conns": four_tuples})
        except RemoteError as exc:
            _log.warning("reset_peers: %s", exc)

    async def relisten(self, listeners: Iterable[TailnetListener]) -> None:
        """Open the node's listeners again in this (new) helper."""
        for listener in list(listeners):
            if listener.closed:
                continue
            method, params = listener.spec
            deadline = trio.current_time() + CALL_BOUND  # no caller waits on a restart
            await self.request(method, {**params, "timeout_ms": ms_until(deadline)},
                               on_result=self.listener_handler(listener, new=False),
                               limit=limit_until(deadline))
            if listener.closed:
                # The application closed it while this helper was opening it again: the node
                # told the dead generation, which held nothing, so close it here, or this
                # helper keeps its port (and accepts connections nobody takes).
                self.release_listener(listener, None)

    # -- result handlers: called in the reader task with a successful answer --

    def new_stream(self, reply: Reply) -> TailnetStream:
        """The stream for a dial answer: registered before the conn's conn_end is read."""
        conn, fd = _claim_fd(reply, "conn", "a dial result")
        return self._register_stream(fd, conn, reply.result)

    def new_packet_conn(self, reply: Reply) -> TailnetPacketConn:
        """The UDP socket for a listen_packet or dial_udp answer."""
        packet_id, fd = _claim_fd(reply, "packet", "a UDP result")

        def closed() -> None:
            if self.packets.pop(packet_id, None) is not None and not self.died.is_set():
                self.rpc.notify_nowait("close_conn", {"conn": packet_id})

        conn = TailnetPacketConn._create(fd, reply.result.get("local"),
                                         reply.result.get("remote"), on_close=closed)
        self.packets[packet_id] = conn
        return conn

    def listener_handler(self, listener: TailnetListener, *,
                         new: bool) -> Callable[[Reply], Disposable]:
        """The result handler of a listen for *listener*: it registers the helper's id before
        the first ``accepted`` naming it is dispatched. Should the caller have stopped
        waiting, the helper's listener is closed, and a *new* listener (one the application
        never got) with it."""

        def register(reply: Reply) -> Disposable:
            reply.close_now()  # a listen answer carries no fd
            listener_id = int_field(reply.result, "listener")
            self.listener_by_id[listener_id] = listener
            self.id_by_listener[listener] = listener_id
            return _ListenerClaim(self, listener, new)

        return register

    def _register_stream(self, fd: int, conn: int, fields: dict[str, Any]) -> TailnetStream:
        state = ConnState(conn, self.number)
        local, remote = fields.get("local"), fields.get("remote")
        if isinstance(local, str) and isinstance(remote, str):
            state.four_tuple = f"{local} {remote}"
        stream = TailnetStream._create(fd, state, fields.get("local"), fields.get("remote"),
                                       on_close=self.stream_closed, whois=self._whois,
                                       via_funnel=fields.get("funnel") is True)
        self.conns[conn] = state
        return stream

    # -- messages from the helper (called in the reader task; must not block) --

    def _on_notification(self, msg: proto.Notification) -> None:
        p = msg.params
        if msg.method == "accepted":
            self._on_accepted(msg)
            return
        if msg.fd is not None:
            os.close(msg.fd)  # no other notification carries an fd: it is nobody's
        if msg.method == "conn_reset":
            held = self._held.pop(int_field(p, "conn"), None)
            if held is not None:
                os.close(held)
        elif msg.method == "conn_end":
            state = self.conns.pop(int_field(p, "conn"), None)
            if state is not None:
                state.finish(p.get("clean") is True, str(p.get("error") or ""))
        elif msg.method == "listener_closed":
            listener = self.listener_by_id.pop(int_field(p, "listener"), None)
            if listener is not None:
                self.id_by_listener.pop(listener, None)
                listener.close_now(f"the helper closed the listener: {p.get('reason', '')}")
        elif msg.method == "state":
            health = p.get("health")
            self._on_backend_state(
                str(p.get("state", "")), str(p.get("auth_url") or ""),
                # Absent (an older helper, or no health word yet): keep what we knew.
                tuple(str(h) for h in health) if isinstance(health, list) else None,
            )

    def _on_accepted(self, msg: proto.Notification) -> None:
        if msg.fd is None:
            raise ProtocolError("accepted notification without its fd")
        p = msg.params
        try:
            conn, listener_id = int_field(p, "conn"), int_field(p, "listener")
        except ProtocolError:
            os.close(msg.fd)
            raise
        stream = self._register_stream(msg.fd, conn, p)  # checks the fd: ProtocolError
        listener = self.listener_by_id.get(listener_id)
        if listener is not None:
            listener.push(stream)
            self._grant_if_short(listener, listener_id)
            return
        # For a listener being closed, nobody will accept it: resetting the stream resets it
        # in the helper too. Any other id was never the host's.
        stream.reset_now()
        if listener_id not in self._retired:
            raise ProtocolError("connections arrived for a listener that never appeared")

    # -- the node's side --

    def release_listener(self, listener: TailnetListener, released: trio.Event | None) -> bool:
        """Forget *listener* and close it in the helper (*released* is set once the helper
        has confirmed). False if this generation did not hold it."""
        listener_id = self.id_by_listener.pop(listener, None)
        if listener_id is None or self.died.is_set():
            return False
        self.listener_by_id.pop(listener_id, None)
        self._ungranted.pop(listener_id, None)
        self._retired.add(listener_id)
        assert self._nursery is not None  # run() started before any listener registered
        self._nursery.start_soon(self._close_listener, listener_id, released)
        return True

    async def _close_listener(self, listener_id: int, released: trio.Event | None) -> None:
        try:
            await self.request("close_listener", {"listener": listener_id},
                               limit=_CLOSE_LISTENER_TIMEOUT)
        except TsprocError:
            pass  # gone already, or the helper died: either way the port is free
        finally:
            # Answered: every `accepted` for it came before the answer.
            self._retired.discard(listener_id)
            if released is not None:
                released.set()

    def grant(self, listener: TailnetListener, stream: TailnetStream) -> None:
        """The application accepted *stream*: its credit goes back to the helper, in batches
        (docs/protocol.md §7). A grant per accept would cost a control message and a wake-up
        of the helper per connection; instead the host grants once half the backlog has been
        accepted, and at once when the helper has run out of credit (the queued and the
        ungranted connections make the backlog), which with fewer than half ungranted means
        that more than half of the backlog waits here. The bound is unchanged: the helper
        still hands over at most backlog connections the host has not granted back."""
        listener_id = self.id_by_listener.get(listener)
        if listener_id is not None and stream._state.generation == self.number:
            ungranted = self._ungranted.get(listener_id, 0) + 1
            self._ungranted[listener_id] = ungranted
            if ungranted >= max(1, listener.backlog // 2):
                self._grant_if_short(listener, listener_id, force=True)
            else:
                self._grant_if_short(listener, listener_id)

    def _grant_if_short(self, listener: TailnetListener, listener_id: int, *,
                        force: bool = False) -> None:
        ungranted = self._ungranted.get(listener_id, 0)
        if ungranted and (force or ungranted + listener.waiting >= listener.backlog):
            self._ungranted[listener_id] = 0
            self.rpc.notify_nowait("grant", {"listener": listener_id, "n": ungranted})

    def stream_closed(self, state: ConnState, held: int | None, seen: bool = False) -> None:
        """A stream was closed, or reset if *held* (a duplicate of its fd, now ours) is given;
        *seen*: the helper tells this close from a half-close by itself."""
        pending = self.conns.pop(state.conn_id, None) is not None
        if self.died.is_set():
            if held is not None:
                os.close(held)
            return
        if state.four_tuple:
            self._closing[state.conn_id] = (self._pings, state.four_tuple)
        if held is not None:
            # Reset: the helper resets the tailnet side, then answers conn_reset, which closes
            # *held* (as the helper's death does). Until then the helper cannot read EOF on
            # its end and half-close the tailnet side before the reset.
            self.rpc.notify_nowait("close_conn", {"conn": state.conn_id, "reset": True})
            self._held[state.conn_id] = held
        elif pending and not seen:
            # Closed before the tailnet side ended: tell the helper to drop the tailnet
            # connection now, instead of keeping it until the peer speaks again.
            self.rpc.notify_nowait("close_conn", {"conn": state.conn_id})


async def _answered_within(answered: trio.Event, host_seconds: float) -> bool:
    """Wait for *answered* while the host runs for *host_seconds*: False if it never came.

    Only the time this host's loop actually ran counts. A loop held up — a slow log handler,
    a blocking call in the application, the whole machine stalled — cannot read an answer
    that arrived meanwhile, and the deadline would fire in the same pass that would have
    read it: every node's helper declared hung at once, healthy ones too. So the wait goes in
    slices of _SLICE, and a slice counts for at most its length, however late it ended: the
    answer is missed only after host_seconds / _SLICE passes of the loop at least, each of
    which could have read it. A stuck helper is still declared hung, after *host_seconds* of
    a host that runs (somewhat later on a loaded one: its slices end late)."""
    awake = 0.0
    while awake < host_seconds:
        began = trio.current_time()
        with trio.move_on_after(min(_SLICE, host_seconds - awake)):
            await answered.wait()
            return True
        awake += min(trio.current_time() - began, _SLICE)
    return answered.is_set()


class _ListenerClaim:
    """What a listen's result handler made: undone by close_now if nobody takes it."""

    def __init__(self, gen: Generation, listener: TailnetListener, new: bool) -> None:
        self._gen = gen
        self._listener = listener
        self._new = new

    def close_now(self) -> None:
        self._gen.release_listener(self._listener, None)
        if self._new:
            self._listener.close_now("the listen call was cancelled")


def _claim_fd(reply: Reply, key: str, what: str) -> tuple[int, int]:
    """The id under *key* and the fd of an answer that must carry both."""
    ident, fd = reply.result.get(key), reply.fd
    if fd is None or not is_int(ident):
        reply.close_now()
        raise ProtocolError(f"{what} must carry a {key} id and an fd")
    return ident, fd


def int_field(params: dict[str, Any], key: str) -> int:
    value = params.get(key)
    if not is_int(value):
        raise ProtocolError(f"field {key!r} must be an integer, got {value!r}")
    return value
