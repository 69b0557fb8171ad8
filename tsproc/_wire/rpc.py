"""The trio side of the protocol: one control channel to one helper process.

It moves bytes and fds between a trio socket and the sans-IO
:class:`~tsproc._wire.protocol.Decoder`, matches responses to requests, and hands notifications
to a callback. It knows nothing of tsnet, processes or restarts.
"""

from __future__ import annotations

import array
import contextlib
import itertools
import math
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar, overload

import trio

from ..errors import (
    HelperDiedError,
    InvalidArgumentError,
    ProtocolError,
    RemoteError,
    error_from_remote,
    redact,
)
from . import protocol as proto

__all__ = ["Disposable", "Reply", "RequestHandler", "RpcChannel"]

_RECV_SIZE: Final = 256 * 1024
_ANC_SIZE: Final = socket.CMSG_SPACE(proto.MAX_PENDING_FDS * array.array("i").itemsize)
# Linux sets close-on-exec on received fds atomically; elsewhere it is set right after recvmsg.
_MSG_CMSG_CLOEXEC: Final[int] = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
# The helper's requests being answered at once; more are refused with `limit` (the helper's
# only caller today, the state store, makes one at a time).
MAX_HOST_IN_FLIGHT: Final = 64

# Answers one request of the helper's (method, params) with a result map; a RemoteError it
# raises is the error answer, with its code.
RequestHandler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(slots=True)
class Reply:
    """A successful response: its result map and the fd it carried (owned by the caller)."""

    result: dict[str, Any]
    fd: int | None

    def close_now(self) -> None:
        """Close the fd, if it carried one (the answer is not wanted)."""
        fd, self.fd = self.fd, None
        _close_fd(fd)


class Disposable(Protocol):
    """What a request's result handler makes: something that can be thrown away at once."""

    def close_now(self) -> None: ...


T = TypeVar("T", bound=Disposable)


class _Pending:
    __slots__ = ("abandoned", "done", "error", "on_result", "value")

    def __init__(self, on_result: Callable[[Reply], Disposable] | None = None) -> None:
        self.done = trio.Event()
        self.value: Disposable | None = None
        self.error: dict[str, str] | None = None
        self.abandoned = False
        self.on_result = on_result


class RpcChannel:
    """Requests, responses and notifications over one connected AF_UNIX stream socket.

    Run :meth:`serve` in a task: it reads until the helper closes the channel (returns) or
    breaks the protocol (raises :class:`ProtocolError`). Notifications go to *on_notification*,
    called from the reader task: it must not block, and it owns any fd in the message.

    *on_break*, if given, is called once with the reason the channel ended, right *before* the
    socket is closed, so that the owner can act before the peer can read EOF (a helper reads
    EOF as "the host is gone" and closes tsnet: see :meth:`Generation._channel_broke`).

    *on_request*, if given, answers the helper's requests (docs/protocol.md §4b), each in a
    task of its own; without it they are answered ``unknown_method``.
    """

    def __init__(
        self,
        sock: trio.socket.SocketType,
        on_notification: Callable[[proto.Notification], None],
        on_break: Callable[[BaseException], None] | None = None,
        on_request: RequestHandler | None = None,
    ) -> None:
        self._sock = sock
        self._on_notification = on_notification
        self._on_break = on_break
        self._on_request = on_request
        self._nursery: trio.Nursery | None = None
        self._answering = 0
        self._decoder = proto.Decoder()
        # A frame is written at once when nothing is queued before it and the socket takes it
        # whole (_send); otherwise it goes through one writer task, so that callers that
        # cannot await (a stream's close, a listener's accept) can still send, and queued
        # frames leave in one write. _unsent counts the frames queued and not yet written.
        self._outbox_send, self._outbox = trio.open_memory_channel[bytes | _FdFrame](math.inf)
        self._unsent = 0
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._broken: BaseException | None = None
        self.closed = trio.Event()

    @property
    def broken(self) -> BaseException | None:
        """Why the channel ended (None while it works)."""
        return self._broken

    async def serve(self) -> None:
        """Read, dispatch and write messages until end of stream; then the channel is closed.

        Raises:
            ProtocolError: the helper broke the protocol.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._write_loop)
                await self._read_loop()
                nursery.cancel_scope.cancel()
        finally:
            self._fail(HelperDiedError("control channel closed"))
        # Raised here, not in the nursery, so that callers see it bare (not in an ExceptionGroup).
        if isinstance(self._broken, ProtocolError):
            raise self._broken

    async def _read_loop(self) -> None:
        try:
            while True:
                data, fds = await self._recv()
                if not data and not fds:
                    self._decoder.receive_eof()
                    self._dispatch_ready()
                    self._fail(HelperDiedError("the helper closed its control channel"))
                    return
                self._decoder.receive_data(data, fds)
                self._dispatch_ready()
        except ProtocolError as exc:
            self._fail(exc)
        except OSError as exc:
            self._fail(HelperDiedError(f"control channel failed: {exc}"))
        except trio.ClosedResourceError:
            pass  # we closed it (close() or a failed write): _fail has recorded why

    async def _write_loop(self) -> None:
        async for item in self._outbox:
            items = [item]
            while True:
                try:
                    items.append(self._outbox.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    # EndOfChannel: the channel failed (_fail closed the outbox) after this
                    # frame was queued; the write below then fails or is cancelled.
                    break
            try:
                for run, fd_frame in _runs(items):
                    data = run
                    if fd_frame is not None:
                        # The fd goes with the frame's first byte (docs/protocol.md §2).
                        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                   array.array("i", [fd_frame.fd]))]
                        sent = await self._sock.sendmsg([data], rights)
                        fd_frame.close()
                        data = data[sent:]
                    while data:
                        sent = await self._sock.send(data)
                        data = data[sent:]
            except OSError as exc:
                self._fail(HelperDiedError(f"cannot write to the helper: {exc}"))
                return
            except trio.ClosedResourceError:
                return
            finally:
                self._unsent -= len(items)
                for leftover in items:
                    if isinstance(leftover, _FdFrame):
                        leftover.close()

    @overload
    async def request(self, method: str, params: dict[str, Any], *,
                      fd: int | None = None) -> Reply: ...

    @overload
    async def request(self, method: str, params: dict[str, Any], *,
                      on_result: Callable[[Reply], T], fd: int | None = None) -> T: ...

    async def request(
        self,
        method: str,
        params: dict[str, Any],
        *,
        on_result: Callable[[Reply], Disposable] | None = None,
        fd: int | None = None,
    ) -> Disposable:
        """Send a request and wait for its response.

        *on_result* turns a successful answer into what the caller gets (by default the
        :class:`Reply` itself). It runs in the reader task, in order with every message around
        the answer — before the ``accepted`` or ``conn_end`` that may follow it and before the
        caller resumes — so the objects it registers exist when those messages are dispatched.
        It owns the reply's fd, must not block, and raises ProtocolError for a malformed
        result (that breaks the channel). *fd*, if given, is sent with the request (which
        then says ``"fd": true``); the caller keeps it: the channel sends a duplicate. When
        the caller stopped waiting (cancelled) what it made is closed at once
        (``close_now``): whatever the helper made for it would otherwise live on with nobody
        knowing its id.

        Raises:
            RemoteError (a typed subclass): the helper answered with an error.
            HelperDiedError / ProtocolError: the channel ended before the answer.
            InvalidArgumentError: the request does not fit in a frame (nothing was sent).
        """
        if self._broken is not None:
            raise self._broken_error()
        request_id = next(self._ids) % (1 << 32)
        if fd is not None:
            params = {**params, "fd": True}
        frame = _encode_request(request_id, method, params)
        pending = _Pending(on_result)
        self._pending[request_id] = pending
        try:
            if fd is None:
                self._send(frame)
            else:
                self._queue(_FdFrame(frame, os.dup(fd)))
            await pending.done.wait()
        except BaseException:
            # Cancelled: a late answer is closed by the reader when it comes.
            pending.abandoned = True
            if pending.value is not None:
                # The answer came in the same scheduling round as the cancellation: the
                # reader delivered it, and nobody will take it now.
                pending.value.close_now()
            raise
        if pending.error is not None:
            raise _remote_error(pending.error)
        if pending.value is None:
            raise self._broken_error()
        return pending.value

    def notify_nowait(self, method: str, params: dict[str, Any]) -> None:
        """Queue a notification; silently dropped if the channel is gone (nobody to tell)."""
        if self._broken is None:
            self._send(proto.encode_notification(method, params))

    def request_nowait(self, method: str, params: dict[str, Any]) -> None:
        """Queue a request whose answer nobody waits for (any fd in it is closed)."""
        if self._broken is None:
            request_id = next(self._ids) % (1 << 32)
            frame = _encode_request(request_id, method, params)
            pending = _Pending()
            pending.abandoned = True
            self._pending[request_id] = pending
            self._send(frame)

    def close(self) -> None:
        """Close the socket and fail every waiting request. Idempotent."""
        self._fail(HelperDiedError("control channel closed"))

    async def _recv(self) -> tuple[bytes, list[int]]:
        data, ancdata, flags, _ = await self._sock.recvmsg(_RECV_SIZE, _ANC_SIZE, _MSG_CMSG_CLOEXEC)
        fds: list[int] = []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
                fds.extend(received)
        if not _MSG_CMSG_CLOEXEC:  # pragma: no cover - macOS
            for fd in fds:
                os.set_inheritable(fd, False)
        if flags & socket.MSG_CTRUNC:
            for fd in fds:
                os.close(fd)
            raise ProtocolError("file descriptors were truncated (MSG_CTRUNC): too many at once")
        return data, fds

    def _dispatch_ready(self) -> None:
        while (msg := self._decoder.next_message()) is not None:
            if isinstance(msg, proto.Response):
                pending = self._pending.pop(msg.id, None)
                if pending is None:
                    _close_fd(msg.fd)
                    raise ProtocolError(f"response to unknown request id {msg.id}")
                self._deliver(pending, msg)
            elif isinstance(msg, proto.Notification):
                self._on_notification(msg)
            else:
                _close_fd(msg.fd)  # no request of the helper's carries one
                self._start_answer(msg)

    def _start_answer(self, msg: proto.Request) -> None:
        if self._on_request is None or self._nursery is None:
            self._respond(msg.id, {"code": "unknown_method",
                                   "message": f"the host answers no {msg.method!r} request"})
        elif self._answering >= MAX_HOST_IN_FLIGHT:
            self._respond(msg.id, {"code": "limit", "message":
                                   f"more than {MAX_HOST_IN_FLIGHT} requests in flight"})
        else:
            self._answering += 1
            self._nursery.start_soon(self._answer, self._on_request, msg)

    async def _answer(self, handler: RequestHandler, msg: proto.Request) -> None:
        try:
            result = await handler(msg.method, msg.params)
        except RemoteError as exc:
            self._respond(msg.id, {"code": exc.code, "message": redact(str(exc))})
        except Exception as exc:
            # A handler's own bug must not take the channel (and the node) down; only the
            # type is named: the text could hold what the handler was given.
            self._respond(msg.id, {"code": "internal",
                                   "message": f"the host failed: {type(exc).__name__}"})
        else:
            self._respond(msg.id, None, result)
        finally:
            self._answering -= 1

    def _respond(self, request_id: int, error: dict[str, str] | None,
                 result: dict[str, Any] | None = None) -> None:
        try:
            frame = proto.encode_response(request_id, error, result)
        except ProtocolError as exc:
            frame = proto.encode_response(request_id, {"code": "limit", "message": str(exc)}, None)
        if self._broken is None:
            self._send(frame)

    def _send(self, frame: bytes) -> None:
        """Write *frame* now if nothing is queued before it and the socket takes it whole;
        otherwise (or for the part it did not take) queue it for the writer task.

        A request then costs no task switch to the writer and no scheduler pass before its
        bytes leave. A frame is never split between the two paths in a way the helper could
        see: what the socket did not take is queued first in line, and the writer sends it
        before anything queued after it."""
        if self._unsent == 0 and self._broken is None:
            try:
                sent = os.write(self._sock.fileno(), frame)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._fail(HelperDiedError(f"cannot write to the helper: {exc}"))
                return
            if sent == len(frame):
                return
            frame = frame[sent:]
        self._queue(frame)

    def _queue(self, item: bytes | _FdFrame) -> None:
        self._unsent += 1
        self._outbox_send.send_nowait(item)

    @staticmethod
    def _deliver(pending: _Pending, response: proto.Response) -> None:
        if response.error is not None:
            _close_fd(response.fd)
            pending.error = response.error
        else:
            assert response.result is not None
            reply = Reply(response.result, response.fd)
            try:
                value = reply if pending.on_result is None else pending.on_result(reply)
            except BaseException:
                # A malformed result (ProtocolError): the channel breaks, and the caller,
                # woken without a value, raises why.
                pending.done.set()
                raise
            if pending.abandoned:
                value.close_now()
                return
            pending.value = value
        pending.done.set()

    def _fail(self, error: BaseException) -> None:
        if self._broken is None:
            self._broken = error
            if self._on_break is not None:
                self._on_break(error)  # before the close below: the peer must not see EOF first
        self._sock.close()
        self._outbox_send.close()
        # Frames the writer will never send: a duplicated fd among them (a forward's listening
        # socket) would otherwise keep that socket open.
        while True:
            try:
                item = self._outbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if isinstance(item, _FdFrame):
                item.close()
        self._decoder.close()
        for pending in self._pending.values():
            pending.done.set()  # unanswered: the caller raises _broken_error()
        self._pending.clear()
        self.closed.set()

    def _broken_error(self) -> BaseException:
        error = self._broken
        if isinstance(error, HelperDiedError | ProtocolError):
            # A fresh instance per raise keeps tracebacks of concurrent callers apart.
            if isinstance(error, HelperDiedError):
                return HelperDiedError(str(error).split("\n", 1)[0])
            return ProtocolError(str(error))
        return HelperDiedError("control channel closed")


@dataclass(slots=True)
class _FdFrame:
    """A queued frame that carries an fd, owned by the channel until sent (then closed)."""

    frame: bytes
    fd: int

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            _close_fd(fd)


def _runs(items: list[bytes | _FdFrame]) -> list[tuple[memoryview, _FdFrame | None]]:
    """The queued items as writes: plain frames joined, each fd frame a write of its own."""
    runs: list[tuple[memoryview, _FdFrame | None]] = []
    plain: list[bytes] = []
    for item in items:
        if isinstance(item, _FdFrame):
            if plain:
                runs.append((memoryview(b"".join(plain)), None))
                plain = []
            runs.append((memoryview(item.frame), item))
        else:
            plain.append(item)
    if plain:
        runs.append((memoryview(b"".join(plain)), None))
    return runs


def _encode_request(request_id: int, method: str, params: dict[str, Any]) -> bytes:
    try:
        return proto.encode_request(request_id, method, params)
    except ProtocolError as exc:
        # The host's own request is too big: that call's fault, not the helper's.
        raise InvalidArgumentError(
            f"the {method!r} request does not fit in a protocol frame ({exc}); "
            "pass a smaller argument"
        ) from None


def _remote_error(error: dict[str, str]) -> RemoteError:
    return error_from_remote(error["code"], error["message"])


def _close_fd(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
