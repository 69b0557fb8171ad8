"""One generation of a node: one helper process, its control channel, and what flows through it.

A *generation* says hello, starts tsnet, comes up, re-creates the node's listeners, and from then
on carries the node's traffic until it dies. It owns the tables that map the helper's conn and
listener ids to the host's streams and listeners; :meth:`Generation.die` fails them all at once.
The :class:`~tsproc._supervisor.Supervisor` replaces a dead generation with a new one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import trio

from . import _protocol as proto
from ._helper import HelperProcess
from ._packet import TailnetPacketConn
from ._rpc import Reply, RpcChannel
from ._streams import ConnState, TailnetListener, TailnetStream
from ._supervisor import RestartPolicy
from .errors import (
    HelperDiedError,
    HelperVersionError,
    NodeTimeoutError,
    ProtocolError,
    RemoteError,
    TsprocError,
)

__all__ = ["Generation"]

_HELLO_TIMEOUT: Final = 10.0
# A request the helper neither answers nor fails within this is treated as a hang (the heartbeat
# normally notices much sooner).
RPC_TIMEOUT: Final = 60.0
# Connections held for listeners whose listen() answer the caller has not yet taken: at most one
# listener's full backlog in practice.
_MAX_ORPHANS: Final = 4096


class Generation:
    """One helper process, its control channel, and what flows through it."""

    def __init__(self, number: int, process: HelperProcess,
                 on_down: Callable[[Generation], None],
                 on_backend_state: Callable[[str, str], None]) -> None:
        self.number = number
        self.process = process
        self._on_down = on_down
        self._on_backend_state = on_backend_state
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
        self._on_down(self)

    async def request(self, method: str, params: dict[str, Any],
                      timeout: float = RPC_TIMEOUT,
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

    async def handshake(self, path: Path) -> None:
        """Say hello and check that the helper speaks this library's protocol version.

        Raises:
            HelperVersionError: it speaks another version.
        """
        reply = await self.request("hello", {"protocol": proto.PROTOCOL_VERSION},
                                   timeout=_HELLO_TIMEOUT)
        self.hello = reply.result
        if reply.result.get("protocol") != proto.PROTOCOL_VERSION:
            raise HelperVersionError(
                f"helper {path} speaks protocol {reply.result.get('protocol')!r} "
                f"(helper version {reply.result.get('helper_version')!r}), but this tsproc "
                f"speaks protocol {proto.PROTOCOL_VERSION}: install a matching helper",
                helper_protocol=reply.result.get("protocol"),
                host_protocol=proto.PROTOCOL_VERSION,
            )

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
            state = self.conns.pop(int_field(p, "conn"), None)
            if state is not None:
                state.finish(p.get("clean") is True, str(p.get("error") or ""))
        elif msg.method == "listener_closed":
            listener = self.listener_by_id.pop(int_field(p, "listener"), None)
            if listener is not None:
                self.id_by_listener.pop(listener, None)
                listener.close_now(f"the helper closed the listener: {p.get('reason', '')}")
        elif msg.method == "state":
            self._on_backend_state(str(p.get("state", "")), str(p.get("auth_url") or ""))

    def _on_accepted(self, msg: proto.Notification) -> None:
        if msg.fd is None:
            raise ProtocolError("accepted notification without its fd")
        p = msg.params
        try:
            conn, listener_id = int_field(p, "conn"), int_field(p, "listener")
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


def int_field(params: dict[str, Any], key: str) -> int:
    value = params.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"field {key!r} must be an integer, got {value!r}")
    return value
