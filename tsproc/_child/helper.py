"""Starting, watching and stopping one helper process.

This module knows about processes, pipes and environment variables, and nothing of the protocol
beyond handing back the host's end of the control socketpair.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from ..errors import HelperNotFoundError, redact
from .connrecord import ConnRecord
from .process import ChildProcess, fork_child

__all__ = ["SECRET_ENV", "HelperProcess", "find_helper", "helper_environment"]

log = logging.getLogger("tsproc.helper")

HELPER_NAME: Final = "tsproc-helper"

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
        path, origin = Path(__file__).parent.parent / "_bin" / HELPER_NAME, "the tsproc package"
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


class HelperProcess(ChildProcess):
    """One running helper: a :class:`~tsproc._child.process.ChildProcess` with the host end of its
    control channel (a socketpair that is the helper's stdin and stdout)."""

    def __init__(self, popen: subprocess.Popen[bytes], control: socket.socket, log_fd: int,
                 record: ConnRecord | None = None):
        super().__init__(popen, log_fd, logger=log, label="helper", parse_line=_parse_line)
        self.control = control
        self._record = record
        # Once it has exited: the connections it had taken on and not handed over (a
        # ConnRecord's open tuples), whose peers the next helper should reset.
        self.unhanded: list[str] = []

    def _on_exit(self) -> None:
        if self._record is not None:
            self.unhanded = self._record.open_tuples()
            self._record.close()

    @property
    def stderr_tail(self) -> deque[str]:
        """The helper's last log lines (info and above), newest last."""
        return self.log_tail

    @classmethod
    def spawn(cls, path: Path, args: list[str], env: Mapping[str, str], *,
              conn_record: bool = False) -> HelperProcess:
        """Start the helper with a fresh socketpair as its stdin/stdout and a pipe as stderr;
        with *conn_record* (a ``node`` helper), with a :class:`ConnRecord` it writes to.

        It forks from the calling (trio) thread (see ``process.py``). The helper itself
        watches its parent with a pidfd and exits at EOF on its stdin; it does not use
        PR_SET_PDEATHSIG (docs/protocol.md §11).

        Raises:
            HelperNotFoundError: it could not be started.
        """
        record = ConnRecord() if conn_record else None
        pass_fds = [] if record is None else [record.fd]
        if record is not None:
            args = [*args, f"-conn-record-fd={record.fd}"]
        host_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            popen, log_fd = fork_child([os.fspath(path), *args], env, stdin=child_end.fileno(),
                                       stdout=child_end.fileno(), pass_fds=pass_fds)
        except OSError as exc:
            host_end.close()
            if record is not None:
                record.close()
            raise HelperNotFoundError(f"cannot start the helper {path}: {exc}") from exc
        finally:
            child_end.close()
        return cls(popen, host_end, log_fd, record)


def _parse_line(text: str) -> tuple[int, str]:
    """One line of the helper's JSON log (docs/protocol.md §10)."""
    try:
        record = json.loads(text)
        level = _LEVELS.get(str(record.get("level")), logging.INFO)
        message = f"[{record.get('source', 'helper')}] {redact(str(record.get('msg', '')))}"
    except (ValueError, AttributeError):
        # A Go panic or runtime message: not JSON, and exactly what a post-mortem needs.
        return logging.ERROR, text
    return level, message
