"""Shared by the asyncio and blocking face tests: resource snapshots, and a Python subprocess
that is interrupted with Ctrl-C (SIGINT) the way a person would."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.conftest import child_pids, fd_targets, open_fds, pid_alive
from tests.test_cli import cli_env


@dataclass
class Snapshot:
    """This process's fds, threads and children at one moment."""

    fds: set[int]
    threads: set[int]
    children: set[int]

    @classmethod
    def take(cls) -> Snapshot:
        return cls(open_fds(), {t.ident for t in threading.enumerate() if t.ident},
                   child_pids())

    def leaks(self) -> str:
        """What was opened since this snapshot and is still open ('' for nothing)."""
        now = Snapshot.take()
        extra_threads = [t.name for t in threading.enumerate() if t.ident not in self.threads]
        extra_children = {p for p in now.children - self.children if pid_alive(p)}
        # Only fds still open when looked at: the listing itself opens one (listdir's), whose
        # number need not be the one it had when this snapshot was taken.
        extra_fds = fd_targets(now.fds - self.fds)
        if not (extra_threads or extra_children or extra_fds):
            return ""
        return f"threads {extra_threads}, children {extra_children}, fds {extra_fds}"

    def assert_nothing_leaked(self, timeout: float = 30.0) -> None:
        """Everything opened since this snapshot is gone (waiting, boundedly, for threads and
        processes that are on their way out)."""
        deadline = time.monotonic() + timeout
        while leaks := self.leaks():
            if time.monotonic() > deadline:
                raise AssertionError(f"leaked: {leaks}")
            time.sleep(0.05)

    async def await_nothing_leaked(self, polls: int = 600) -> None:
        """:meth:`assert_nothing_leaked` for asyncio code: looks every 50 ms, *polls* times,
        without blocking the loop."""
        for _ in range(polls):
            if not (leaks := self.leaks()):
                break
            await asyncio.sleep(0.05)
        assert not leaks, leaks


def wait_until(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# Prepended to every script. Ctrl-C must reach it as it would an interactive program: a test
# run started in the background by a non-interactive shell (`make test &`, a CI runner's job)
# has SIGINT ignored, children inherit that, and Python then never raises KeyboardInterrupt —
# every Ctrl-C test failed so, while the same suite in the foreground passed. And SIGUSR1 dumps
# every thread's stack to stderr, so a script that does hang says where before it is killed.
_SCRIPT_PRELUDE = (
    "import faulthandler, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "faulthandler.register(signal.SIGUSR1)\n"
)


class Script:
    """``python -c SOURCE`` with its stdout read line by line."""

    def __init__(self, source: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SCRIPT_PRELUDE + source, *args], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=cli_env(), text=True,
        )
        self.lines: list[str] = []
        self._partial = ""

    def wait_for(self, prefix: str, timeout: float = 90.0) -> str:
        assert self.process.stdout is not None
        # The pipe's fd, read raw: a buffered readline() can take two lines off the pipe and
        # return one, and select() then never reports the second (a `ready:` line was lost so).
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines:
                if line.startswith(prefix):
                    return line[len(prefix):].strip()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.process.poll() is not None
                                  and not select.select([fd], [], [], 0)[0]):
                exited = self.process.poll()
                self.dump_and_kill()
                raise AssertionError(
                    f"no {prefix!r} line (exit status {exited}, stdout {self.lines}); "
                    f"stderr:\n{self.stderr()}")
            if select.select([fd], [], [], min(remaining, 1.0))[0]:
                chunk = os.read(fd, 65536)
                if chunk:
                    self._partial += chunk.decode()
                    *done, self._partial = self._partial.split("\n")
                    self.lines += [line + "\n" for line in done]

    def interrupt(self, timeout: float = 60.0) -> tuple[int, str]:
        """Ctrl-C: SIGINT, then the exit status and stderr."""
        self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.dump_and_kill()
            message = f"still running {timeout} s after Ctrl-C:\n{self.stderr()}"
            raise AssertionError(message) from None
        return code, self.stderr()

    def stderr(self) -> str:
        assert self.process.stderr is not None
        if self.process.poll() is None:
            return "(still running)"
        return self.process.stderr.read()

    def dump_and_kill(self) -> None:
        """Kill a script that hangs, after it has written its threads' stacks to stderr."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGUSR1)
            time.sleep(1)
        self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        self.kill()
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


def assert_gone(pid: int, timeout: float = 30.0) -> None:
    """Process *pid* (not ours: the script's helper) has exited."""
    wait_until(lambda: not pid_alive(pid), timeout, f"helper {pid} to exit")


def kill(pid: int | None) -> None:
    assert pid is not None
    os.kill(pid, signal.SIGKILL)


def kill_mid_read(pid: int | None, recv: Callable[[int], bytes]) -> None:
    """SIGKILL the helper *pid* while a blocking socket's *recv* has data still to come: its
    reads end in ConnectionResetError, never a clean ``b""`` end."""
    kill(pid)
    with pytest.raises(ConnectionResetError):
        while recv(100):  # never a clean b"" end
            pass


async def akill_mid_read(pid: int | None, reader: asyncio.StreamReader) -> None:
    """:func:`kill_mid_read` for an asyncio stream."""
    kill(pid)
    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(60):
            while await reader.read(100):  # never a clean b"" end
                pass


def check_ctrl_c(script: Script) -> None:
    """SIGINT to *script* once it is ready: it exits with KeyboardInterrupt and its node's
    helper is gone (leaving the ``with`` / ``async with`` closed the node)."""
    try:
        helper = int(script.wait_for("helper:"))
        script.wait_for("ready:")
        code, stderr = script.interrupt()
        assert "KeyboardInterrupt" in stderr, stderr
        assert code != 0
        assert_gone(helper)
    finally:
        script.close()
