"""One child process under trio: started, reaped, its log forwarded, stopped.

Used for the helper (``helper.py``) and for Headscale (``tsproc/testing/_headscale.py``). It
knows nothing of what the child is: the caller gives the argv, the fds and how to read one log
line.

- It forks from the calling (trio) thread, not through ``trio.lowlevel.open_process``, which
  forks from a worker thread that exits when idle: a child whose parent-death signal is armed
  (Headscale through ``setpriv --pdeathsig``) would get it when that *thread* ends.
- It reaps through a pidfd on Linux (no thread, no SIGCHLD handler); elsewhere in a thread.
- It forwards the child's log lines to a logger, each cut at :data:`MAX_LOG_LINE`, and keeps the
  last few for error messages: a child that writes without newlines (a flood, binary junk) must
  not make the host buffer, re-scan and log without bound.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import trio

from ..errors import redact

__all__ = ["MAX_LOG_LINE", "ChildProcess", "LineParser", "fork_child"]

# A log line longer than this is cut; the rest of the line is dropped.
MAX_LOG_LINE: Final = 64 * 1024
TAIL_LINES: Final = 20
# How long the log may go on after the child exited (its last lines are in the pipe).
_LOG_DRAIN: Final = 2.0
# The forwarder lets other tasks run after this many lines: a 64 KiB read holds hundreds, and
# a slow log handler would otherwise hold the host's loop for seconds (every node's traffic
# and heartbeats wait on it).
_LINES_PER_CHECKPOINT: Final = 16
# The logger's time (the application's handlers, which may be slow: a file on a busy disk, a
# remote sink) is capped: LOG_SHARE of the loop's time, with bursts of up to LOG_BURST
# seconds (a token bucket). A dying Go runtime's dump is thousands of lines; the lines over
# the cap are counted, not logged, and still reach the tail (error messages).
LOG_SHARE: Final = 0.1
LOG_BURST: Final = 0.5

# One log line (redacted, without its newline) → (logging level, message); None skips it.
LineParser = Callable[[str], tuple[int, str] | None]


def fork_child(argv: Sequence[str], env: Mapping[str, str], *, stdin: int,
               stdout: int | None,
               pass_fds: Sequence[int] = ()) -> tuple[subprocess.Popen[bytes], int]:
    """Fork *argv* from this thread with a new pipe as its stderr (and as its stdout when
    *stdout* is None): the Popen and the pipe's read end, for :class:`ChildProcess`. The
    child inherits *pass_fds* too, under the same numbers.

    Raises:
        OSError: it could not be started (the pipe is closed then).
    """
    log_read, log_write = os.pipe()
    # A child inherits the forking thread's signal mask, and the asyncio and blocking faces'
    # trio thread blocks SIGINT (tsproc._trio_thread): a helper must start with none blocked.
    mask = signal.pthread_sigmask(signal.SIG_SETMASK, set())
    try:
        popen = subprocess.Popen(
            list(argv),
            stdin=stdin,
            stdout=log_write if stdout is None else stdout,
            stderr=log_write,
            env=dict(env),
            close_fds=True,
            pass_fds=tuple(pass_fds),
            # Its own session: a Ctrl-C meant for the host's terminal must not reach it; the
            # host decides when it stops.
            start_new_session=True,
        )
    except OSError:
        os.close(log_read)
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(log_write)
    return popen, log_read


class ChildProcess:
    """A running child: its pid, its exit status once reaped, and its last log lines.

    Create it from :func:`fork_child`'s popen and pipe, run :meth:`watch` in a task (it reaps
    the process and forwards its log), and end it with :meth:`terminate` or :meth:`kill`.
    """

    def __init__(self, popen: subprocess.Popen[bytes], log_fd: int, *, logger: logging.Logger,
                 label: str, parse_line: LineParser) -> None:
        self._popen = popen
        self._log = trio.lowlevel.FdStream(log_fd)
        self._logger = logger
        self._label = label
        self._parse_line = parse_line
        self.log_tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._tokens = LOG_BURST
        self._refilled = 0.0
        self._dropped = 0  # lines not handed to the logger since the last report
        self._reported = 0.0
        self._log_done = trio.Event()
        self.exited = trio.Event()
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        return self._popen.pid

    async def watch(self) -> None:
        """Forward the log and reap the process; returns once it has exited. Never raises
        (it may run as a system task), and never leaves a process or a zombie behind."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._forward_log)
                await self._wait_exit()
                # Its log ends with it, unless a process it started still holds the pipe.
                with trio.move_on_after(_LOG_DRAIN):
                    await self._log_done.wait()
                nursery.cancel_scope.cancel()
        finally:
            if self.returncode is None:
                # Cancelled before the child exited.
                self.kill()
                self.returncode = self._popen.wait()
            self._on_exit()
            self.exited.set()

    def _on_exit(self) -> None:
        """Called once the child has exited, before :attr:`exited` is set."""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send *sig* to the child if it still runs."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._popen.send_signal(sig)

    async def terminate(self, grace: float) -> None:
        """SIGTERM, then SIGKILL after *grace* seconds; returns when it has exited."""
        self.kill(signal.SIGTERM)
        with trio.move_on_after(grace) as scope:
            scope.shield = True
            await self.exited.wait()
        if not self.exited.is_set():
            self.kill(signal.SIGKILL)
            with trio.CancelScope(shield=True):
                await self.exited.wait()

    def describe_exit(self) -> str:
        """'exit status 3' or 'killed by SIGKILL', for messages and events."""
        code = self.returncode
        if code is None:
            return "still running"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"

    async def _wait_exit(self) -> None:
        if sys.platform == "linux":
            pidfd = os.pidfd_open(self._popen.pid)
            try:
                await trio.lowlevel.wait_readable(pidfd)
            finally:
                os.close(pidfd)
            self.returncode = self._popen.wait()
        else:  # pragma: no cover - no pidfd
            self.returncode = await trio.to_thread.run_sync(
                self._popen.wait, abandon_on_cancel=True
            )

    async def _forward_log(self) -> None:
        pending = b""
        cutting = False  # inside a line whose start was logged as truncated
        try:
            while chunk := await self._log.receive_some(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for i, line in enumerate(lines, 1):
                    if i % _LINES_PER_CHECKPOINT == 0:
                        await trio.lowlevel.checkpoint()
                    if cutting:  # the rest of the cut line
                        cutting = False
                        continue
                    self._log_line(line)
                if len(pending) > MAX_LOG_LINE:
                    if not cutting:
                        self._log_line(pending[:MAX_LOG_LINE] + b" [line truncated]")
                    pending, cutting = b"", True
            if pending and not cutting:
                self._log_line(pending)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        except Exception:  # the log is a courtesy: never let it take the watcher down
            self._logger.exception("forwarding the log of %s %d failed", self._label, self.pid)
        finally:
            self._report_dropped(at_end=True)
            self._log_done.set()
            await self._log.aclose()

    def _log_line(self, raw: bytes) -> None:
        text = redact(raw.decode("utf-8", "replace").rstrip("\r"))
        parsed = self._parse_line(text) if text.strip() else None
        if parsed is None:
            return
        level, message = parsed
        if level >= logging.INFO:
            self.log_tail.append(message)
        if not self._logger.isEnabledFor(level):
            return
        now = trio.current_time()
        self._tokens = min(LOG_BURST, self._tokens + (now - self._refilled) * LOG_SHARE)
        self._refilled = now
        if self._tokens <= 0:
            self._dropped += 1
            return
        began = time.perf_counter()
        self._report_dropped()
        self._logger.log(level, "%s %d: %s", self._label, self.pid, message)
        self._tokens -= time.perf_counter() - began

    def _report_dropped(self, *, at_end: bool = False) -> None:
        """Say how many lines were not forwarded: at most once a second, and at the end."""
        now = trio.current_time()
        if self._dropped and (at_end or now - self._reported >= 1):
            self._reported = now
            self._logger.warning("%s %d: %d log lines not forwarded (logging took more than "
                                 "%d %% of the time)", self._label, self.pid, self._dropped,
                                 LOG_SHARE * 100)
            self._dropped = 0
