"""A host whose own loop is held up does not take its healthy helpers for hung
(docs/design.md, supervision; the soak saw every node's helper replaced at once while the host
logged a dying helper's crash dump).

A heartbeat counts only the time the host's loop ran: an answer the host could not read
because it was not running is not a missed answer. A stuck helper is still detected
(tests/test_supervision.py, SIGSTOP)."""

from __future__ import annotations

import logging
import sys
import time

import trio

import tsproc
from tsproc._child.helper import _parse_line
from tsproc._child.process import ChildProcess, fork_child

# Tight enough that a stall of the host's loop longer than the timeout is easy to make.
TIGHT = tsproc.RestartPolicy(initial_backoff=0.05, heartbeat_interval=0.05,
                             heartbeat_timeout=0.5)


async def test_a_loop_blocked_longer_than_the_heartbeat_timeout_replaces_no_helper(
        tailnet_node):
    async with tailnet_node("stalled", restart=TIGHT) as node:
        pid = node.helper_pid
        for _ in range(10):
            for _ in range(3):
                await trio.sleep(0)  # a few passes of the loop: a heartbeat goes out
            time.sleep(2 * TIGHT.heartbeat_timeout)  # then the application blocks it
        await trio.sleep(1)  # heartbeats resume and are answered
        assert node.helper_pid == pid
        assert (await node.status()).helper_restarts == 0


class SlowHandler(logging.Handler):
    """A log sink that takes 2 ms a record (a loaded machine, a remote log)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        time.sleep(0.002)
        self.records.append(record.getMessage())


async def test_a_flood_on_a_helpers_log_starves_no_heartbeat(tailnet_node):
    """A dying Go runtime writes thousands of lines at once; forwarding them must leave the
    loop to the other nodes, and is capped (the rest counted)."""
    handler = SlowHandler()
    logger = logging.getLogger("tsproc.flood-test")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    lines = 5000
    script = (f"import sys\nfor i in range({lines}):\n"
              "    sys.stderr.write(f'goroutine {i} [select]: a line of a crash dump\\n')\n")
    try:
        async with tailnet_node("healthy", restart=TIGHT) as node:
            pid = node.helper_pid
            popen, log_fd = fork_child([sys.executable, "-c", script], {}, stdin=0,
                                       stdout=None)
            child = ChildProcess(popen, log_fd, logger=logger, label="flooder",
                                 parse_line=_parse_line)
            with trio.fail_after(60):
                await child.watch()
            await trio.sleep(0.5)
            assert node.helper_pid == pid
            assert (await node.status()).helper_restarts == 0
    finally:
        logger.removeHandler(handler)
    forwarded = [r for r in handler.records if "crash dump" in r]
    assert 0 < len(forwarded) < lines
    dropped = [r for r in handler.records if "log lines not forwarded" in r]
    assert 1 <= len(dropped) <= 60  # at most one report a second
    assert sum(int(r.split(": ")[1].split()[0]) for r in dropped) == lines - len(forwarded)
    assert "goroutine 4999" in child.log_tail[-1]
