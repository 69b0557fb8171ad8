"""Starting, watching and stopping one helper process.

This module knows about processes, pipes and environment variables, and nothing of the protocol
beyond handing back the host's end of the control socketpair.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import trio

from .errors import HelperNotFoundError, redact

__all__ = ["SECRET_ENV", "HelperProcess", "find_helper", "helper_environment"]

log = logging.getLogger("tsproc.helper")

HELPER_NAME: Final = "tsproc-helper"
STDERR_TAIL_LINES: Final = 20
# A log line longer than this is cut: a helper that writes without newlines (a flood, binary
# junk) must not make the host buffer, re-scan and log without bound.
MAX_LOG_LINE: Final = 64 * 1024

# Variables tsnet (or Go) would read a credential from. The child never gets them: its secrets
# travel only in RPC params.
SECRET_ENV: Final = frozenset(
    {
        "TS_AUTHKEY",
        "TS_AUTH_KEY",
        "TS_CLIENT_SECRET",
        "TS_CLIENT_ID",
        "TS_ID_TOKEN",
        "TS_AUDIENCE",
        "TSNET_FORCE_LOGIN",
        "TS_API_KEY",
    }
)

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


def find_helper(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The helper binary to run: *explicit*, else ``$TSPROC_HELPER``, else the packaged one.

    Raises:
        HelperNotFoundError: it is missing, not a file, or not executable.
    """
    if explicit is not None:
        path, origin = Path(explicit), "the helper_path argument"
    elif os.environ.get("TSPROC_HELPER"):
        path, origin = Path(os.environ["TSPROC_HELPER"]), "$TSPROC_HELPER"
    else:
        path, origin = Path(__file__).parent / "_bin" / HELPER_NAME, "the tsproc package"
    hint = (
        "Build it with `make helper` in a source checkout, install a tsproc wheel for this "
        "platform, or point TSPROC_HELPER at a tsproc-helper binary."
    )
    if not path.exists():
        raise HelperNotFoundError(f"no helper binary at {path} (from {origin}). {hint}")
    if not path.is_file():
        raise HelperNotFoundError(f"helper path {path} (from {origin}) is not a file. {hint}")
    if not os.access(path, os.X_OK):
        raise HelperNotFoundError(
            f"helper binary {path} (from {origin}) is not executable: chmod +x it. {hint}"
        )
    return path


def helper_environment(extra: Mapping[str, str] = {}) -> dict[str, str]:
    """The child's environment: ours without credentials, plus *extra* (knobs, never secrets)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in SECRET_ENV and redact(value) == value
    }
    env.update(extra)
    return env


class HelperProcess:
    """One running helper: its pid, the host end of its control channel, and its log lines.

    Create it with :meth:`spawn`, run :meth:`watch` in a task (it reaps the process and forwards
    its stderr), and end it with :meth:`terminate` or :meth:`kill`.
    """

    def __init__(self, popen: subprocess.Popen[bytes], control: socket.socket, stderr_fd: int):
        self._popen = popen
        self.control = control
        self._stderr = trio.lowlevel.FdStream(stderr_fd)
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self.exited = trio.Event()
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        return self._popen.pid

    @classmethod
    def spawn(cls, path: Path, args: list[str], env: Mapping[str, str]) -> HelperProcess:
        """Start the helper with a fresh socketpair as its stdin/stdout and a pipe as stderr.

        This forks from the calling (trio) thread on purpose: the helper sets
        PR_SET_PDEATHSIG, which fires when the *thread* that forked it ends, and trio's
        ``open_process`` forks from a worker thread that exits after a few idle seconds.
        """
        host_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        err_read, err_write = os.pipe()
        try:
            popen = subprocess.Popen(
                [os.fspath(path), *args],
                stdin=child_end.fileno(),
                stdout=child_end.fileno(),
                stderr=err_write,
                env=dict(env),
                close_fds=True,
                # Its own session: a Ctrl-C meant for the host's terminal must not reach it; the
                # host decides when it stops.
                start_new_session=True,
            )
        except OSError as exc:
            host_end.close()
            os.close(err_read)
            raise HelperNotFoundError(f"cannot start the helper {path}: {exc}") from exc
        finally:
            child_end.close()
            os.close(err_write)
        return cls(popen, host_end, err_read)

    async def watch(self) -> None:
        """Forward stderr to logging and reap the process; returns once it has exited."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._forward_stderr)
                await self._wait_exit()
        finally:
            if self.returncode is None:
                # Cancelled before the helper exited: never leave a process or a zombie behind.
                self.kill()
                self.returncode = self._popen.wait()
            self.exited.set()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send *sig* to the helper if it still runs."""
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

    async def _forward_stderr(self) -> None:
        pending = b""
        cutting = False  # inside a line whose start was logged as truncated
        try:
            while chunk := await self._stderr.receive_some(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
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
        finally:
            await self._stderr.aclose()

    def _log_line(self, raw: bytes) -> None:
        text = redact(raw.decode("utf-8", "replace").rstrip("\r"))
        if not text:
            return
        try:
            record = json.loads(text)
            level = _LEVELS.get(str(record.get("level")), logging.INFO)
            message = f"[{record.get('source', 'helper')}] {redact(str(record.get('msg', '')))}"
        except (ValueError, AttributeError):
            # A Go panic or runtime message: not JSON, and exactly what a post-mortem needs.
            level, message = logging.ERROR, text
        if level >= logging.INFO:
            self.stderr_tail.append(message)
        if log.isEnabledFor(level):
            log.log(level, "helper %d: %s", self.pid, message)
