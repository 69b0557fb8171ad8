"""The host fed garbage: a fake helper speaks the protocol well enough to bring a node up, then
breaks it in one precise way. The host must neither crash nor hang nor leak: it kills the
helper, starts a new one (which behaves) and reports a HelperRestartedEvent.

tests/test_supervision.py covers the real helper's garbage_after fault; these cover every
other way a helper's bytes and fds can be wrong (docs/protocol.md §1, §2, §9).
"""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pytest
import trio

import tsproc
from tests.conftest import fd_targets, open_fds

FAST = tsproc.RestartPolicy(initial_backoff=0.05, heartbeat_interval=0.2, heartbeat_timeout=5.0)

# A helper in Python, on the library's own sans-IO codec. Generation 1 misbehaves (as
# FAKE_HELPER_MODE says) right after answering its first heartbeat once it is up, so that the
# node is running; later generations behave.
FAKE_HELPER = textwrap.dedent("""\
    #!{python}
    import array, os, socket, sys, time
    from tsproc._wire import protocol as proto

    MODE = os.environ.get("FAKE_HELPER_MODE", "")
    HOSTILE = os.environ.get("TSPROC_HELPER_GENERATION") == "1"
    sock = socket.socket(fileno=os.dup(0))
    STATUS = {{
        "backend_state": "Running", "tailscale_ips": ["100.64.0.9"], "hostname": "fake",
        "dns_name": "fake.tailnet.test.", "magic_dns_suffix": "tailnet.test", "auth_url": "",
        "health": [], "self": {{}}, "peers": [], "goroutines": 1, "listeners": 0, "conns": 0,
    }}

    def send(data, nfds=0, sockets=False):
        fds = []
        for _ in range(nfds):
            if sockets:  # what the helper passes for a connection: a socketpair end
                a, b = socket.socketpair()
                fds.append(a.detach())
                b.close()
            else:
                r, w = os.pipe()
                os.close(r)
                fds.append(w)
        rights = array.array("i", fds).tobytes()
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)] if fds else [])
        for fd in fds:
            os.close(fd)

    def note(method, nfds=0, sockets=False, **params):
        send(proto.encode_notification(method, params), nfds, sockets)

    def misbehave():
        if MODE == "garbage":
            send(b"\\xde\\xad\\xbe\\xef" * 16)
        elif MODE == "huge_length":
            send(b"\\xff\\xff\\xff\\xff")
        elif MODE == "too_many_fds_at_once":
            note("x", nfds=65)
        elif MODE == "unclaimed_fds":
            for _ in range(3):
                note("x", nfds=30)
        elif MODE == "fd_flag_without_fd":
            note("accepted", listener=1, conn=1, fd=True)
            sock.shutdown(socket.SHUT_WR)
        elif MODE == "response_to_unknown_id":
            send(proto.encode_response(424242, None, {{}}))
        elif MODE == "request_from_helper":
            send(proto.encode_request(1, "ping", {{}}))
        elif MODE == "accepted_with_bad_conn":
            note("accepted", nfds=1, sockets=True, listener=1, conn="one", fd=True)
        elif MODE == "accepted_with_bad_listener":
            note("accepted", nfds=1, sockets=True, listener=None, conn=5, fd=True)
        elif MODE == "accepted_not_a_socket":
            note("accepted", nfds=1, listener=1, conn=5, fd=True)
        elif MODE == "accepted_datagram_socket":
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            frame = proto.encode_notification("accepted", {{"listener": 1, "conn": 5, "fd": True}})
            rights = array.array("i", [a.fileno()]).tobytes()
            sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
        elif MODE == "orphan_flood":
            # Connections for listeners the host never asked for, each on its own id.
            for i in range(5000):
                note("accepted", nfds=1, sockets=True, listener=1000 + i, conn=i, fd=True)
        elif MODE == "ext_type":
            send(b"\\x00\\x00\\x00\\x0a" + b"\\x93\\x02\\xa1x\\x81\\xa1a\\xd4\\x01\\x00")
        elif MODE == "unexpected_fds":
            # Not errors: fds on notifications that carry none. The host closes them.
            note("state", nfds=1, state="Running", fd=True)
            note("conn_end", nfds=1, conn=77, clean=True, fd=True)
            note("listener_closed", nfds=1, listener=77, reason="x", fd=True)
            note("no_such_notification", nfds=1, fd=True)
            note("unflagged_then_claimed", nfds=1)
            note("state", nfds=0, state="Running", fd=True)
            print("fake: unexpected fds sent", file=sys.stderr, flush=True)
        elif MODE == "stderr_flood":
            chunk = b"x" * (1 << 20)
            for _ in range(64):
                os.write(2, chunk)
            os.write(2, b"\\n")
            print("fake: flood done", file=sys.stderr, flush=True)

    decoder = proto.Decoder()
    up = pinged = False
    listeners = 0
    while True:
        data, anc, _, _ = sock.recvmsg(1 << 16, socket.CMSG_SPACE(64 * 4))
        if not data:
            break
        decoder.receive_data(data)
        while (m := decoder.next_message()) is not None:
            if not isinstance(m, proto.Request):
                continue
            result, error = {{}}, None
            if m.method == "hello":
                result = {{"protocol": 1, "helper_version": "fake", "tailscale_version": "0",
                          "pid": os.getpid()}}
            elif m.method in ("up", "status"):
                up = up or m.method == "up"
                result = STATUS
            elif m.method == "listen":
                listeners += 1
                result = {{"listener": listeners, "addr": "100.64.0.9:%d" % m.params["port"]}}
            elif m.method not in ("start", "ping", "close_listener", "shutdown"):
                result, error = None, {{"code": "unknown_method", "message": m.method}}
            send(proto.encode_response(m.id, error, result))
            if m.method == "shutdown":
                sys.exit(0)
            if m.method == "ping" and HOSTILE and up and not pinged:
                pinged = True
                misbehave()
""")


@pytest.fixture
def fake_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Returns a function that sets the misbehaviour and gives the fake helper's path."""
    path = tmp_path / "fake-helper"
    path.write_text(FAKE_HELPER.format(python=sys.executable))
    path.chmod(0o755)

    def with_mode(mode: str) -> Path:
        monkeypatch.setenv("FAKE_HELPER_MODE", mode)
        return path

    return with_mode


async def next_restart(
    events: tsproc.EventStream, timeout: float = 20
) -> tsproc.HelperRestartedEvent:
    with trio.fail_after(timeout):
        async for event in events:
            if isinstance(event, tsproc.HelperRestartedEvent):
                return event
    raise AssertionError("event stream ended before a restart")


async def settled_fds(expected: int, timeout: float = 5) -> set[int]:
    """This process's fds once their number has come back to *expected* (or the timeout)."""
    with trio.move_on_after(timeout):
        while len(open_fds()) != expected:
            await trio.sleep(0.02)
    return open_fds()


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("garbage", "outside 1.."),
        ("huge_length", "outside 1.."),
        ("too_many_fds_at_once", "MSG_CTRUNC"),
        ("unclaimed_fds", "no message to claim them"),
        ("fd_flag_without_fd", "waited for its fd"),
        ("response_to_unknown_id", "unknown request id"),
        ("request_from_helper", "unexpected request"),
        ("accepted_with_bad_conn", "'conn' must be an integer"),
        ("accepted_with_bad_listener", "'listener' must be an integer"),
        ("accepted_not_a_socket", "not a socket"),
        ("accepted_datagram_socket", "not SOCK_STREAM"),
        ("orphan_flood", "never appeared"),
        ("ext_type", "not allowed"),
    ],
)
async def test_a_helper_that_breaks_the_protocol_is_replaced_and_nothing_leaks(
    fake_helper, mode, reason
):
    path = fake_helper(mode)
    async with tsproc.Node("victim", ephemeral=True, helper_path=path, restart=FAST) as node:
        first_pid = node.helper_pid
        events = node.events()
        fds_before = open_fds()
        restarted = await next_restart(events)
        assert restarted.generation == 2
        assert "protocol error" in restarted.reason and reason in restarted.reason, restarted
        assert node.helper_pid not in (None, first_pid)
        assert (await node.status()).backend_state == "Running"
        # Every fd the bad helper passed is closed; the new helper's channel replaced the
        # old one's.
        leaked = await settled_fds(len(fds_before)) - fds_before
        assert len(open_fds()) == len(fds_before), f"fds left: {fd_targets(leaked)}"


async def test_fds_on_notifications_that_carry_none_are_closed(fake_helper):
    path = fake_helper("unexpected_fds")
    async with tsproc.Node("tolerant", ephemeral=True, helper_path=path, restart=FAST) as node:
        events = node.events()
        fds_before = open_fds()
        pid = node.helper_pid
        # The last one says fd:true and the host pairs it with the unflagged fd before it:
        # the stream stays in step (docs/protocol.md §2), so this is no protocol error.
        with trio.move_on_after(2):
            await next_restart(events, timeout=2)
            raise AssertionError("the host restarted a helper that broke no rule")
        assert node.helper_pid == pid
        leaked = await settled_fds(len(fds_before)) - fds_before
        assert len(open_fds()) == len(fds_before), f"fds left: {fd_targets(leaked)}"
        assert (await node.status()).backend_state == "Running"


async def test_a_helper_flooding_stderr_without_newlines_costs_the_host_little(fake_helper, caplog):
    path = fake_helper("stderr_flood")
    started = time.monotonic()
    async with tsproc.Node("noisy", ephemeral=True, helper_path=path, restart=FAST) as node:
        with trio.fail_after(30):
            while not any("flood done" in r.getMessage() for r in caplog.records):
                await trio.sleep(0.05)
        assert (await node.status()).backend_state == "Running"
    longest = max(len(r.getMessage()) for r in caplog.records)
    assert longest < 128 * 1024, f"a {longest}-byte log record"
    assert time.monotonic() - started < 30
