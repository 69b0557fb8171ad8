"""Hostile input for the host's protocol layer: random frames, truncated frames, wrong types,
fds without messages and messages without fds — checked against the rules of
docs/protocol.md §1 and §2, not against the decoder's own code.

tests/test_protocol.py has the byte-level cases and the properties of well-formed streams;
this file adds what a broken or hostile helper could send.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import struct
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tsproc._wire import protocol as proto
from tsproc._wire.rpc import RpcChannel
from tsproc.errors import HelperDiedError, ProtocolError, RemoteError

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def drain(decoder: proto.Decoder) -> list[proto.Message]:
    out = []
    while (msg := decoder.next_message()) is not None:
        out.append(msg)
    return out


class Pipes:
    """Pipes whose write ends are passed as fds; a write end is closed everywhere exactly when
    its read end reads EOF, which no reuse of fd numbers can fake."""

    def __init__(self) -> None:
        self.read_ends: dict[int, int] = {}  # write end -> read end

    def make(self, n: int) -> list[int]:
        fds = []
        for _ in range(n):
            r, w = os.pipe()
            os.set_blocking(r, False)
            self.read_ends[w] = r
            fds.append(w)
        return fds

    def closed(self, w: int) -> bool:
        try:
            return os.read(self.read_ends[w], 1) == b""
        except BlockingIOError:
            return False

    def cleanup(self) -> None:
        """Close every read end, and every write end that is still open (after a failure)."""
        for w, r in self.read_ends.items():
            if not self.closed(w):
                os.close(w)
            os.close(r)
        self.read_ends.clear()


@pytest.fixture
def pipes():
    p = Pipes()
    yield p
    p.cleanup()


# -- an oracle: what docs/protocol.md §1 allows, written independently of _wire/protocol.py --

MAX_ID = 1 << 32


def _value_ok(value: object, depth: int) -> bool:
    if depth > 32:
        return False
    if isinstance(value, list):
        return all(_value_ok(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _value_ok(v, depth + 1) for k, v in value.items())
    return value is None or type(value) in (bool, int, float, str, bytes)


def _fields_ok(value: object) -> bool:
    return isinstance(value, dict) and isinstance(value.get("fd", False), bool)


def spec_allows(obj: object) -> bool:
    """Whether a decoded body is a message of docs/protocol.md §1."""
    if not isinstance(obj, list) or not obj or not _value_ok(obj, 0) or type(obj[0]) is not int:
        return False
    kind = obj[0]

    def id_ok(v: object) -> bool:
        return type(v) is int and 0 <= v < MAX_ID

    if kind == 0:
        return len(obj) == 4 and id_ok(obj[1]) and isinstance(obj[2], str) and _fields_ok(obj[3])
    if kind == 1:
        if len(obj) != 4 or not id_ok(obj[1]):
            return False
        error, result = obj[2], obj[3]
        if error is None:
            return _fields_ok(result)
        return (isinstance(error, dict) and isinstance(error.get("code"), str)
                and isinstance(error.get("message"), str) and result is None)
    if kind == 2:
        return len(obj) == 3 and isinstance(obj[1], str) and _fields_ok(obj[2])
    return False


# -- strategies --

scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=12) | st.binary(max_size=12)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4))
    | st.builds(msgpack.Timestamp, st.integers(0, 2**32 - 1))
)
keys = st.text(max_size=6) | st.sampled_from(["fd", "code", "message"]) | st.binary(max_size=3)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)
# A field of the wrong type now and then, the right one mostly.
ids = st.integers(0, MAX_ID - 1) | st.sampled_from([-1, MAX_ID, True, 1.0, "1", None])
methods = st.text(max_size=10) | st.sampled_from([b"ping", 5, None, ["x"]])
fields = (
    st.dictionaries(st.text(max_size=6), values, max_size=4)
    | st.fixed_dictionaries({"fd": st.booleans() | st.integers(0, 1) | st.text(max_size=2)})
    | values
)
errors = (
    st.fixed_dictionaries({"code": st.text(max_size=8), "message": st.text(max_size=8)})
    | values
)
kinds = st.sampled_from([0, 1, 2]) | st.sampled_from([3, -1, True, False, 0.0, 2.0, "0", None])
message_like = st.one_of(
    st.tuples(kinds, ids, methods, fields).map(list),
    st.tuples(kinds, ids, errors | st.none(), fields | st.none()).map(list),
    st.tuples(kinds, methods, fields).map(list),
    st.lists(values, max_size=5),
    values,
)


def packed(obj: object) -> bytes | None:
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return None


@SETTINGS
@given(message_like)
def test_random_frames_decode_exactly_when_the_spec_allows_them(obj):
    body = packed(obj)
    assume(body is not None)
    decoder = proto.Decoder()
    try:
        decoder.receive_data(frame(body))
        msgs = drain(decoder)
    except ProtocolError:
        assert not spec_allows(msgpack.unpackb(body, raw=False, strict_map_key=False)), obj
        return
    # Decoded: the spec must allow it, and the message says what the body said.
    assert spec_allows(obj), f"accepted a body the spec forbids: {obj!r}"
    wants_fd = isinstance(obj[-1], dict) and obj[-1].get("fd") is True
    if wants_fd:
        assert msgs == []  # it waits for its fd
        with pytest.raises(ProtocolError, match="waited for its fd"):
            decoder.receive_eof()
        return
    (msg,) = msgs
    # Compared as bytes: NaN, which random floats include, is not equal to itself.
    if isinstance(msg, proto.Request):
        assert packed([0, msg.id, msg.method, msg.params]) == body
    elif isinstance(msg, proto.Response):
        assert packed([1, msg.id, msg.error, msg.result]) == body
    else:
        assert packed([2, msg.method, msg.params]) == body
    decoder.receive_eof()


@SETTINGS
@given(st.binary(max_size=64), st.integers(0, 3))
def test_random_bodies_in_valid_frames_are_a_message_or_a_ProtocolError(body, extra):
    """Any bytes behind a correct length: never any exception but ProtocolError."""
    decoder = proto.Decoder()
    try:
        decoder.receive_data(frame(body) + b"\x00" * extra)
        drain(decoder)
        decoder.receive_eof()
    except ProtocolError:
        pass


int64 = st.integers(-(2**63), 2**63 - 1)
good_messages = st.one_of(
    st.builds(proto.Request, st.integers(0, MAX_ID - 1), st.text(max_size=8),
              st.dictionaries(st.text(max_size=4).filter(lambda k: k != "fd"),
                              int64 | st.text(max_size=4), max_size=3)),
    st.builds(proto.Notification, st.text(max_size=8),
              st.dictionaries(st.text(max_size=4).filter(lambda k: k != "fd"),
                              int64 | st.text(max_size=4), max_size=3)),
    st.builds(proto.Response, st.integers(0, MAX_ID - 1),
              st.fixed_dictionaries({"code": st.text(max_size=6),
                                     "message": st.text(max_size=6)}),
              st.none()),
)


def encode(msg: proto.Message) -> bytes:
    if isinstance(msg, proto.Request):
        return proto.encode_request(msg.id, msg.method, msg.params)
    if isinstance(msg, proto.Response):
        return proto.encode_response(msg.id, msg.error, msg.result)
    return proto.encode_notification(msg.method, msg.params)


@SETTINGS
@given(st.lists(good_messages, min_size=1, max_size=6), st.data())
def test_a_truncated_stream_yields_the_whole_frames_and_fails_at_eof(msgs, data):
    frames = [encode(m) for m in msgs]
    stream = b"".join(frames)
    cut = data.draw(st.integers(0, len(stream)))
    boundaries = {0}
    for f in frames:
        boundaries.add(max(boundaries) + len(f))
    complete = sum(1 for b in sorted(boundaries)[1:] if b <= cut)
    decoder = proto.Decoder()
    decoder.receive_data(stream[:cut])
    assert drain(decoder) == msgs[:complete]
    if cut in boundaries:
        decoder.receive_eof()
    else:
        with pytest.raises(ProtocolError, match="inside a frame"):
            decoder.receive_eof()


# -- fds and messages in any proportion --

@SETTINGS
@given(
    st.lists(st.booleans(), max_size=8),  # per message: does it say fd:true?
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 3)), max_size=10),  # (cut, fds)
    st.booleans(),  # end the stream, or just close the decoder
)
def test_every_fd_is_delivered_once_in_order_or_closed(wants, reads, eof):
    """Whatever mix of fds and messages arrives, each fd is handed to exactly one message that
    said fd:true, oldest first, or closed by the decoder; none is left open or closed twice."""
    pipes = Pipes()
    try:
        stream = b"".join(
            proto.encode_notification("m", {"i": i, "fd": True} if w else {"i": i})
            for i, w in enumerate(wants)
        )
        decoder = proto.Decoder(max_pending_fds=4)
        passed: list[int] = []
        delivered: list[proto.Message] = []
        failed = False
        pos = 0
        try:
            for cut, nfds in [*reads, (len(stream), 0)]:
                fds = pipes.make(nfds)
                passed += fds
                end = max(pos, min(cut, len(stream)))
                decoder.receive_data(stream[pos:end], fds)
                pos = end
                for msg in drain(decoder):
                    if msg.fd is not None:
                        assert not pipes.closed(msg.fd), "delivered an fd the decoder closed"
                    delivered.append(msg)
            if eof:
                decoder.receive_eof()
                delivered += drain(decoder)
        except ProtocolError:
            failed = True
        decoder.close()

        # Messages come out in order, each with an fd exactly when it asked for one.
        assert [m.params["i"] for m in delivered] == list(range(len(delivered)))
        for m in delivered:
            assert (m.fd is not None) == (m.params.get("fd") is True)
        got = [m.fd for m in delivered if m.fd is not None]
        assert got == passed[: len(got)], "fds not handed out oldest first"
        for fd in passed:
            if fd in got:
                assert not pipes.closed(fd)
                os.close(fd)
            else:
                assert pipes.closed(fd), "an fd nobody got was left open"
        if not failed:
            # Without an error every message came out, unless it still waits (no EOF).
            waiting = len(wants) - len(delivered)
            assert waiting == 0 or (not eof and wants[len(delivered)])
    finally:
        pipes.cleanup()


def test_fds_without_messages_beyond_the_bound_are_a_ProtocolError(pipes):
    fds = pipes.make(proto.MAX_PENDING_FDS)
    decoder = proto.Decoder()
    decoder.receive_data(b"", fds)  # 64 is allowed
    assert decoder.pending_fds == proto.MAX_PENDING_FDS
    (one_more,) = pipes.make(1)
    with pytest.raises(ProtocolError, match="no message to claim them"):
        decoder.receive_data(b"", [one_more])
    assert all(pipes.closed(fd) for fd in [*fds, one_more])


def test_messages_held_behind_one_without_its_fd_are_bounded():
    decoder = proto.Decoder()
    decoder.receive_data(proto.encode_notification("accepted", {"fd": True}))
    one = proto.encode_notification("conn_end", {"conn": 1})
    # MAX_HELD_MESSAGES held, counting the one that waits, is still allowed.
    decoder.receive_data(one * (proto.MAX_HELD_MESSAGES - 1))
    assert decoder.next_message() is None
    with pytest.raises(ProtocolError, match="held behind one that waits for its fd"):
        decoder.receive_data(one)


def test_a_message_without_its_fd_at_eof_is_a_ProtocolError_even_after_others():
    decoder = proto.Decoder()
    decoder.receive_data(proto.encode_notification("x", {})
                         + proto.encode_notification("accepted", {"fd": True}))
    assert [m.method for m in drain(decoder)] == ["x"]
    with pytest.raises(ProtocolError, match="waited for its fd"):
        decoder.receive_eof()


# -- the trio layer over it: whatever the helper sends, the channel ends cleanly --

# What a broken helper might send: (kind, with fd flag, with an fd attached).
helper_sends = st.lists(
    st.tuples(
        st.sampled_from(["response", "error", "late_response", "notification", "unknown_note",
                         "request", "garbage", "truncated"]),
        st.booleans(),
        st.booleans(),
    ),
    max_size=8,
)


def helper_frame(kind: str, flag: bool, pending_id: int) -> bytes:
    fields: dict[str, Any] = {"fd": True} if flag else {}
    if kind == "response":
        return proto.encode_response(pending_id, None, {"ok": 1, **fields})
    if kind == "error":
        return proto.encode_response(pending_id, {"code": "limit", "message": "full"}, None)
    if kind == "late_response":
        return proto.encode_response(999, None, fields)
    if kind == "notification":
        return proto.encode_notification("state", {"state": "Running", **fields})
    if kind == "unknown_note":
        return proto.encode_notification("no_such_thing", fields)
    if kind == "request":
        return proto.encode_request(1, "ping", fields)
    if kind == "garbage":
        return b"\xff\xff\xff\xff junk"
    return proto.encode_notification("cut", {})[:-2]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(helper_sends)
def test_RpcChannel_ends_cleanly_whatever_the_helper_sends(sends):
    trio.run(_channel_scenario, sends)


async def _channel_scenario(sends: list[tuple[str, bool, bool]]) -> None:
    pipes = Pipes()
    host_end, helper_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    notified: list[str] = []

    def on_notification(msg: proto.Notification) -> None:
        notified.append(msg.method)
        if msg.fd is not None:
            os.close(msg.fd)

    rpc = RpcChannel(trio.socket.from_stdlib_socket(host_end), on_notification)
    outcomes: list[object] = []
    try:
        async with trio.open_nursery() as nursery:

            async def one_request() -> None:
                try:
                    reply = await rpc.request("status", {})
                except (RemoteError, HelperDiedError, ProtocolError) as exc:
                    outcomes.append(exc)
                else:
                    outcomes.append(reply)
                    if reply.fd is not None:
                        os.close(reply.fd)

            for _ in range(len(sends) + 1):
                nursery.start_soon(one_request)
            await trio.testing.wait_all_tasks_blocked()
            # The helper's side: each message with or without an fd, then the end.
            for i, (kind, flag, attach) in enumerate(sends):
                data = helper_frame(kind, flag, pending_id=i + 1)
                anc = []
                if attach:
                    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                            array.array("i", pipes.make(1)).tobytes())]
                helper_end.sendmsg([data], anc)
                for item in anc:
                    os.close(array.array("i", item[2])[0])
            helper_end.close()
            with trio.fail_after(10), contextlib.suppress(ProtocolError):
                await rpc.serve()
        # Every request got an outcome: an answer, an error, or "the helper is gone".
        assert len(outcomes) == len(sends) + 1
        assert rpc.broken is not None
        for w in pipes.read_ends:
            assert pipes.closed(w), "an fd the helper passed is still open in the host"
    finally:
        helper_end.close()
        host_end.close()
        pipes.cleanup()


async def test_RpcChannel_write_loop_survives_a_failure_with_frames_queued():
    """Regression: _fail closes the outbox while the writer holds a frame; the writer's
    receive_nowait then raised EndOfChannel and crashed the node's nursery (seen as a flaky
    test_helper_that_is_not_a_helper_at_all)."""
    host_end, helper_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    rpc = RpcChannel(trio.socket.from_stdlib_socket(host_end), lambda msg: None)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rpc.serve)
            await trio.testing.wait_all_tasks_blocked()
            rpc.notify_nowait("a", {})  # hands the frame to the waiting writer...
            rpc.close()  # ...and fails the channel before the writer runs
        assert isinstance(rpc.broken, HelperDiedError)
    finally:
        helper_end.close()
        host_end.close()


async def test_RpcChannel_result_handler_that_refuses_a_result_breaks_the_channel_not_the_caller():
    """on_result raising ProtocolError (a malformed answer): the caller gets that error, it is
    not left waiting, and the channel ends."""
    host_end, helper_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    rpc = RpcChannel(trio.socket.from_stdlib_socket(host_end), lambda msg: None)

    def refuse(reply: Any) -> Any:
        raise ProtocolError("a dial result must carry a conn id and an fd")

    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:

                async def serve() -> None:
                    with contextlib.suppress(ProtocolError):
                        await rpc.serve()

                nursery.start_soon(serve)
                await trio.testing.wait_all_tasks_blocked()
                # The reader sees these bytes only at our next checkpoint, by which time the
                # request below (id 1) is registered.
                helper_end.sendall(proto.encode_response(1, None, {"conn": "x"}))
                with pytest.raises(ProtocolError, match="must carry"):
                    await rpc.request("dial", {}, on_result=refuse)
        assert isinstance(rpc.broken, ProtocolError)
    finally:
        helper_end.close()
        host_end.close()


async def test_RpcChannel_calls_on_break_before_the_helper_can_read_EOF():
    """Regression (issue 15): on a protocol error the owner must be able to SIGKILL the helper
    before the helper reads EOF, which it takes for "the host is gone" (it then closes tsnet,
    and an ephemeral node logs out: the next helper came back as a new node, with new IPs).
    So on_break runs once, with the error, while the host's end is still open."""
    host_end, helper_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    breaks: list[tuple[BaseException, bytes | None]] = []

    def on_break(error: BaseException) -> None:
        try:
            seen: bytes | None = helper_end.recv(1, socket.MSG_DONTWAIT)  # b"" would be EOF
        except BlockingIOError:
            seen = None  # nothing to read: the host's end is still open
        breaks.append((error, seen))

    rpc = RpcChannel(trio.socket.from_stdlib_socket(host_end), lambda msg: None, on_break)
    try:
        helper_end.sendall(b"\xff\xff\xff\xff not a frame")
        with trio.fail_after(10), pytest.raises(ProtocolError, match="frame length"):
            await rpc.serve()
        rpc.close()  # the owner closes it again: on_break is not called twice
        assert len(breaks) == 1
        error, seen = breaks[0]
        assert isinstance(error, ProtocolError)
        assert seen is None, "the helper could read EOF before on_break ran"
        assert helper_end.recv(1) == b""  # and the channel is closed after it
    finally:
        helper_end.close()
        host_end.close()
