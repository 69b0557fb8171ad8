"""The tsproc wire protocol, sans I/O (docs/protocol.md).

This module never touches a socket. :class:`Decoder` takes bytes and file descriptors exactly as
``recvmsg`` returned them and gives back whole messages, each with the fd it carries; the
``encode_*`` functions turn messages into frame bytes. The trio layer (``rpc.py``) moves the bytes
and fds; everything that can go wrong with their content is decided here, where it is testable
byte by byte.

Why a FIFO of fds: the kernel keeps an ``SCM_RIGHTS`` fd with the byte it was sent with, but one
``recvmsg`` on a stream socket may return the bytes of several frames, and on Linux it may hand an
fd over together with bytes that precede its frame. So fds are queued in arrival order, and a
message that says ``"fd": true`` takes the oldest one, waiting (with every message after it) until
one has arrived. Order is all that is needed; where the kernel splits reads does not matter.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

from .._util import is_int
from ..errors import ProtocolError

__all__ = [
    "MAX_FRAME",
    "MAX_PENDING_FDS",
    "PROTOCOL_VERSION",
    "Decoder",
    "Message",
    "Notification",
    "Request",
    "Response",
    "encode_notification",
    "encode_request",
    "encode_response",
]

PROTOCOL_VERSION: Final = 1
MAX_FRAME: Final = 1 << 20
MAX_PENDING_FDS: Final = 64
# Messages held back behind one that waits for its fd: a peer that promises an fd and never
# sends it must not make us buffer without end.
MAX_HELD_MESSAGES: Final = 4096
# No message nests arrays or maps this deep; the bound (the helper's too) stops a hostile frame
# from costing a deep recursion anywhere downstream.
MAX_DEPTH: Final = 32
_HEADER: Final = 4
_MAX_ID: Final = 1 << 32

REQUEST: Final = 0
RESPONSE: Final = 1
NOTIFICATION: Final = 2


@dataclass(frozen=True, slots=True)
class Request:
    """``[0, id, method, params]``: a request expecting one :class:`Response` with the same id."""

    id: int
    method: str
    params: dict[str, Any]
    fd: int | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Response:
    """``[1, id, error, result]``: ``error`` is ``None`` or ``{"code", "message"}``."""

    id: int
    error: dict[str, str] | None
    result: dict[str, Any] | None
    fd: int | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Notification:
    """``[2, method, params]``: a one-way message."""

    method: str
    params: dict[str, Any]
    fd: int | None = field(default=None, compare=False)


Message = Request | Response | Notification


def _frame(body: bytes) -> bytes:
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds the {MAX_FRAME}-byte cap")
    return len(body).to_bytes(_HEADER, "big") + body


def _pack(obj: object) -> bytes:
    data = msgpack.packb(obj, use_bin_type=True)
    assert isinstance(data, bytes)
    return data


def encode_request(id: int, method: str, params: dict[str, Any]) -> bytes:
    """Frame bytes of a request. Pass the fd (if ``params["fd"]``) in the same ``sendmsg``."""
    if not 0 <= id < _MAX_ID:
        raise ValueError(f"request id {id} out of range")
    return _frame(_pack([REQUEST, id, method, params]))


def encode_response(
    id: int, error: dict[str, str] | None, result: dict[str, Any] | None
) -> bytes:
    """Frame bytes of a response."""
    return _frame(_pack([RESPONSE, id, error, result]))


def encode_notification(method: str, params: dict[str, Any]) -> bytes:
    """Frame bytes of a notification."""
    return _frame(_pack([NOTIFICATION, method, params]))


def _str_map(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ProtocolError(f"{what} must be a map with string keys, got {type(value).__name__}")
    return value


def _check_value(value: object, depth: int) -> None:
    """Refuse what docs/protocol.md §1 rules out: extension types (msgpack decodes some, like
    timestamps, by itself), non-string map keys, and nesting deeper than MAX_DEPTH."""
    if depth > MAX_DEPTH:
        raise ProtocolError(f"values nest deeper than {MAX_DEPTH}")
    if isinstance(value, list):
        for item in value:
            _check_value(item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ProtocolError(f"map key {key!r} is not a string")
            _check_value(item, depth + 1)
    elif value is not None and not isinstance(value, bool | int | float | str | bytes):
        raise ProtocolError(f"value of type {type(value).__name__} is not allowed")


def _wants_fd(fields: dict[str, Any]) -> bool:
    """Whether a message's params (or result) say it carries an fd. A non-bool "fd" is a
    protocol error: guessing would pair the fd that may come with it with the wrong message."""
    fd = fields.get("fd", False)
    if not isinstance(fd, bool):
        raise ProtocolError(f'"fd" must be a bool, got {type(fd).__name__}')
    return fd


def _uint_id(value: object) -> int:
    if not is_int(value) or not 0 <= value < _MAX_ID:
        raise ProtocolError(f"message id must be an unsigned 32-bit integer, got {value!r}")
    return value


def _parse(body: bytes) -> tuple[Message, bool]:
    """Parse one frame body into a message (fd not yet attached) and whether it wants an fd."""
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except msgpack.ExtraData as exc:
        raise ProtocolError("bytes after the message inside a frame") from exc
    except (ValueError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"frame is not valid msgpack: {exc}") from exc
    if not isinstance(obj, list) or not obj:
        raise ProtocolError(f"frame must hold a msgpack array, got {type(obj).__name__}")
    _check_value(obj, 0)
    # An integer, not a bool or a float that happens to compare equal.
    kind = obj[0] if type(obj[0]) is int else None
    msg: Message
    if kind == REQUEST and len(obj) == 4:
        if not isinstance(obj[2], str):
            raise ProtocolError("request method must be a string")
        params = _str_map(obj[3], "request params")
        msg = Request(_uint_id(obj[1]), obj[2], params)
        wants = _wants_fd(params)
    elif kind == RESPONSE and len(obj) == 4:
        error = obj[2]
        if error is not None:
            error = _str_map(error, "response error")
            if not isinstance(error.get("code"), str) or not isinstance(error.get("message"), str):
                raise ProtocolError("response error must have string code and message")
            if obj[3] is not None:
                raise ProtocolError("a response with an error must have a nil result")
            result = None
        else:
            result = _str_map(obj[3], "response result")
        msg = Response(_uint_id(obj[1]), error, result)
        wants = result is not None and _wants_fd(result)
    elif kind == NOTIFICATION and len(obj) == 3:
        if not isinstance(obj[1], str):
            raise ProtocolError("notification method must be a string")
        params = _str_map(obj[2], "notification params")
        msg = Notification(obj[1], params)
        wants = _wants_fd(params)
    else:
        raise ProtocolError(f"unknown message shape: kind {obj[0]!r} with {len(obj)} elements")
    return msg, wants


def _with_fd(msg: Message, fd: int) -> Message:
    if isinstance(msg, Request):
        return Request(msg.id, msg.method, msg.params, fd)
    if isinstance(msg, Response):
        return Response(msg.id, msg.error, msg.result, fd)
    return Notification(msg.method, msg.params, fd)


class Decoder:
    """Turns received bytes and fds into messages, in order.

    Feed it with :meth:`receive_data` (bytes and the fds of the same ``recvmsg``), call
    :meth:`receive_eof` at end of stream, and collect messages with :meth:`next_message`.
    Any violation raises :class:`~tsproc.errors.ProtocolError`; after that the decoder is dead
    and has closed every fd it held. Fds inside returned messages belong to the caller.
    """

    def __init__(self, *, max_frame: int = MAX_FRAME, max_pending_fds: int = MAX_PENDING_FDS):
        self._max_frame = max_frame
        self._max_pending_fds = max_pending_fds
        self._buf = bytearray()
        self._fds: deque[int] = deque()
        # Parsed messages not yet delivered: the head may be waiting for its fd.
        self._parsed: deque[tuple[Message, bool]] = deque()
        self._error: ProtocolError | None = None
        self._eof = False

    @property
    def pending_fds(self) -> int:
        """How many received fds no message has claimed yet."""
        return len(self._fds)

    def receive_data(self, data: bytes, fds: tuple[int, ...] | list[int] = ()) -> None:
        """Take the bytes and fds of one ``recvmsg``. Raises ProtocolError on bad input."""
        if self._error is not None:
            for fd in fds:
                os.close(fd)
            raise self._error
        if self._eof:
            for fd in fds:
                os.close(fd)
            raise self._fail("data after end of stream")
        self._fds.extend(fds)
        self._buf += data
        try:
            self._split_frames()
        except ProtocolError as exc:
            raise self._fail_with(exc) from None
        self._check_fd_bound()

    def receive_eof(self) -> None:
        """The stream ended. Raises ProtocolError if it ended inside a frame or a message
        still waits for its fd. Unclaimed fds are closed either way."""
        if self._error is not None:
            raise self._error
        self._eof = True
        if self._buf:
            raise self._fail(f"stream ended inside a frame ({len(self._buf)} bytes left)")
        wanting = sum(1 for _, wants in self._parsed if wants)
        if wanting > len(self._fds):
            raise self._fail("stream ended while a message still waited for its fd")
        # Messages already complete stay deliverable; fds that no message can claim any more
        # are closed now.
        while len(self._fds) > wanting:
            os.close(self._fds.pop())

    def next_message(self) -> Message | None:
        """The next complete message, or None if none is ready."""
        if self._error is not None or not self._parsed:
            return None
        msg, wants = self._parsed[0]
        if wants:
            if not self._fds:
                return None
            msg = _with_fd(msg, self._fds.popleft())
        self._parsed.popleft()
        return msg

    def close(self) -> None:
        """Close every fd still held. Idempotent."""
        self._close_fds()
        self._parsed.clear()

    def _split_frames(self) -> None:
        buf = self._buf
        pos = 0
        while len(buf) - pos >= _HEADER:
            length = int.from_bytes(buf[pos : pos + _HEADER], "big")
            if length == 0 or length > self._max_frame:
                raise ProtocolError(
                    f"frame length {length} outside 1..{self._max_frame}: not a tsproc peer, "
                    "or a corrupted stream"
                )
            end = pos + _HEADER + length
            if len(buf) < end:
                break
            self._parsed.append(_parse(bytes(buf[pos + _HEADER : end])))
            pos = end
        del buf[:pos]

    def _check_fd_bound(self) -> None:
        waiting = sum(1 for _, wants in self._parsed if wants)
        if len(self._fds) - waiting > self._max_pending_fds:
            raise self._fail(
                f"{len(self._fds)} file descriptors arrived with no message to claim them"
            )
        if waiting > len(self._fds) and len(self._parsed) > MAX_HELD_MESSAGES:
            raise self._fail(
                f"{len(self._parsed)} messages are held behind one that waits for its fd"
            )

    def _fail(self, message: str) -> ProtocolError:
        return self._fail_with(ProtocolError(message))

    def _fail_with(self, exc: ProtocolError) -> ProtocolError:
        self._error = exc
        self.close()
        return exc

    def _close_fds(self) -> None:
        while self._fds:
            os.close(self._fds.popleft())
