"""The sans-IO protocol layer, byte by byte, with no process and no trio."""

from __future__ import annotations

import os
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsproc._wire import protocol as proto
from tsproc.errors import ProtocolError


def frame_of(obj: object) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def pipe_fds():
    """A supply of real fds (pipe ends), closed at the end if still open."""
    made: list[int] = []

    def make(n: int) -> list[int]:
        fds: list[int] = []
        for _ in range((n + 1) // 2):
            r, w = os.pipe()
            fds += [r, w]
        made.extend(fds)
        return fds[:n]

    yield make
    for fd in made:
        if fd_is_open(fd):
            os.close(fd)


def drain(decoder: proto.Decoder) -> list[proto.Message]:
    out = []
    while (msg := decoder.next_message()) is not None:
        out.append(msg)
    return out


def test_encode_decode_round_trip_all_kinds():
    data = (
        proto.encode_request(7, "dial", {"host": "db", "port": 5432})
        + proto.encode_response(7, None, {"conn": 1})
        + proto.encode_response(8, {"code": "timeout", "message": "slow"}, None)
        + proto.encode_notification("state", {"state": "Running"})
    )
    d = proto.Decoder()
    d.receive_data(data)
    assert drain(d) == [
        proto.Request(7, "dial", {"host": "db", "port": 5432}),
        proto.Response(7, None, {"conn": 1}),
        proto.Response(8, {"code": "timeout", "message": "slow"}, None),
        proto.Notification("state", {"state": "Running"}),
    ]


def test_Decoder_byte_at_a_time():
    data = proto.encode_notification("a", {"x": 1}) + proto.encode_notification("b", {})
    d = proto.Decoder()
    got = []
    for i in range(len(data)):
        d.receive_data(data[i : i + 1])
        got += drain(d)
    assert [m.method for m in got] == ["a", "b"]
    d.receive_eof()


@pytest.mark.parametrize("where", ["before", "with", "after"])
def test_fd_arrives_before_with_or_after_its_message(pipe_fds, where):
    (fd,) = pipe_fds(1)
    frame = proto.encode_notification("accepted", {"conn": 1, "fd": True})
    d = proto.Decoder()
    if where == "before":
        d.receive_data(b"", [fd])
        d.receive_data(frame)
    elif where == "with":
        d.receive_data(frame[:3], [fd])
        d.receive_data(frame[3:])
    else:
        d.receive_data(frame)
        assert d.next_message() is None  # waits for its fd
        d.receive_data(b"", [fd])
    (msg,) = drain(d)
    assert msg.fd == fd


def test_message_waiting_for_fd_holds_back_later_messages(pipe_fds):
    (fd,) = pipe_fds(1)
    d = proto.Decoder()
    d.receive_data(
        proto.encode_notification("accepted", {"fd": True})
        + proto.encode_notification("conn_end", {"conn": 1})
    )
    assert drain(d) == []
    d.receive_data(b"", [fd])
    msgs = drain(d)
    assert [m.method for m in msgs] == ["accepted", "conn_end"]
    assert msgs[0].fd == fd and msgs[1].fd is None


def test_fds_of_one_recvmsg_go_to_messages_in_order(pipe_fds):
    fds = pipe_fds(3)
    d = proto.Decoder()
    frames = b"".join(proto.encode_notification("accepted", {"n": i, "fd": True}) for i in range(3))
    # One read brings every byte and all three fds at once.
    d.receive_data(frames, fds)
    assert [(m.params["n"], m.fd) for m in drain(d)] == list(zip(range(3), fds, strict=True))


def test_response_result_with_fd(pipe_fds):
    (fd,) = pipe_fds(1)
    d = proto.Decoder()
    d.receive_data(proto.encode_response(3, None, {"conn": 9, "fd": True}), [fd])
    (msg,) = drain(d)
    assert isinstance(msg, proto.Response) and msg.fd == fd


def test_eof_with_message_waiting_for_fd_is_an_error():
    d = proto.Decoder()
    d.receive_data(proto.encode_notification("accepted", {"fd": True}))
    with pytest.raises(ProtocolError, match="waited for its fd"):
        d.receive_eof()


def test_eof_inside_a_frame_is_an_error():
    d = proto.Decoder()
    d.receive_data(proto.encode_notification("x", {})[:-1])
    with pytest.raises(ProtocolError, match="inside a frame"):
        d.receive_eof()


def test_unclaimed_fds_are_closed_at_eof(pipe_fds):
    fds = pipe_fds(2)
    d = proto.Decoder()
    d.receive_data(proto.encode_notification("x", {}), fds)
    d.receive_eof()
    assert [m.method for m in drain(d)] == ["x"]
    assert not any(fd_is_open(fd) for fd in fds)


def test_too_many_unclaimed_fds_is_an_error_and_closes_them(pipe_fds):
    fds = pipe_fds(5)
    d = proto.Decoder(max_pending_fds=4)
    with pytest.raises(ProtocolError, match="no message to claim"):
        d.receive_data(b"", fds)
    assert not any(fd_is_open(fd) for fd in fds)
    # The decoder stays dead, and closes whatever it is handed afterwards.
    (late,) = pipe_fds(1)
    with pytest.raises(ProtocolError):
        d.receive_data(b"", [late])
    assert not fd_is_open(late)


def test_protocol_error_closes_fds_waiting_for_a_message(pipe_fds):
    (fd,) = pipe_fds(1)
    d = proto.Decoder()
    d.receive_data(b"", [fd])
    with pytest.raises(ProtocolError):
        d.receive_data(b"\xff\xff\xff\xff")
    assert not fd_is_open(fd)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x00\x00\x00\x00", "outside"),
        (b"\xff\xff\xff\xff", "outside"),
        (struct.pack(">I", proto.MAX_FRAME + 1), "outside"),
        (frame_of({"not": "an array"}), "array"),
        (frame_of([]), "array"),
        (frame_of([3, "x", {}]), "unknown message shape"),
        (frame_of([True, 1, "m", {}]), "unknown message shape"),
        (frame_of([0, 1, "m"]), "unknown message shape"),
        (frame_of([0, -1, "m", {}]), "unsigned"),
        (frame_of([0, 1 << 32, "m", {}]), "unsigned"),
        (frame_of([0, 1, 5, {}]), "method must be a string"),
        (frame_of([0, 1, "m", []]), "map"),
        (frame_of([2, "m", {1: 2}]), "map key"),
        (frame_of([1, 1, {"code": "x"}, None]), "code and message"),
        (frame_of([1, 1, {"code": "x", "message": "y"}, {}]), "nil result"),
        (frame_of([1, 1, None, None]), "map"),
        (struct.pack(">I", 2) + b"\x90\x90", "after the message"),
        (struct.pack(">I", 1) + b"\xc1", "not valid msgpack"),
    ],
)
def test_malformed_frames_raise_ProtocolError(data, match):
    d = proto.Decoder()
    with pytest.raises(ProtocolError, match=match):
        d.receive_data(data)


def test_oversized_frame_is_refused_before_it_is_buffered():
    d = proto.Decoder(max_frame=1024)
    with pytest.raises(ProtocolError, match=r"outside 1\.\.1024"):
        d.receive_data(struct.pack(">I", 1025))


def test_encoder_refuses_oversized_frames():
    with pytest.raises(ProtocolError, match="exceeds"):
        proto.encode_notification("big", {"blob": b"x" * proto.MAX_FRAME})


# -- properties --

params_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
params = st.dictionaries(st.text(max_size=8).filter(lambda k: k != "fd"), params_values,
                         max_size=5)
messages = st.one_of(
    st.builds(proto.Request, st.integers(0, 2**32 - 1), st.text(max_size=10), params),
    st.builds(proto.Notification, st.text(max_size=10), params),
    st.builds(proto.Response, st.integers(0, 2**32 - 1), st.none(), params),
)


def encode(msg: proto.Message) -> bytes:
    if isinstance(msg, proto.Request):
        return proto.encode_request(msg.id, msg.method, msg.params)
    if isinstance(msg, proto.Response):
        return proto.encode_response(msg.id, msg.error, msg.result)
    return proto.encode_notification(msg.method, msg.params)


@settings(max_examples=200, deadline=None)
@given(st.lists(messages, max_size=8), st.data())
def test_any_split_of_any_messages_decodes_to_the_same_messages(msgs, data):
    stream = b"".join(encode(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    d = proto.Decoder()
    got: list[proto.Message] = []
    last = 0
    for cut in [*cuts, len(stream)]:
        d.receive_data(stream[last:cut])
        last = cut
        got += drain(d)
    d.receive_eof()
    assert got == msgs


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash_or_hang_the_decoder(blob):
    d = proto.Decoder()
    try:
        d.receive_data(blob)
        drain(d)
        d.receive_eof()
        drain(d)
    except ProtocolError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=6), st.data())
def test_fds_pair_with_their_messages_whatever_the_arrival_order(wants, data):
    """Each message that says fd:true gets exactly the fds in order, however they arrive."""
    frames = [proto.encode_notification("m", {"i": i, "fd": True} if w else {"i": i})
              for i, w in enumerate(wants)]
    n_fds = sum(wants)
    fds: list[int] = []
    for _ in range(n_fds):
        r, w = os.pipe()
        os.close(w)
        fds.append(r)
    try:
        # Fds may arrive at any byte offset, but never later than... anything: before or after.
        stream = b"".join(frames)
        positions = sorted(data.draw(st.lists(st.integers(0, len(stream)), min_size=n_fds,
                                              max_size=n_fds)))
        d = proto.Decoder()
        got: list[proto.Message] = []
        last = 0
        for fd, pos in zip(fds, positions, strict=True):
            d.receive_data(stream[last:pos], [fd])
            last = pos
            got += drain(d)
        d.receive_data(stream[last:])
        got += drain(d)
        d.receive_eof()
        assert [m.params["i"] for m in got] == list(range(len(wants)))
        assert [m.fd for m in got if m.fd is not None] == fds
    finally:
        for fd in fds:
            if fd_is_open(fd):
                os.close(fd)
