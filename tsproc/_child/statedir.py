"""The node's state directory: where it is, who may write it, and who holds it.

The host (not the helper) holds an exclusive ``flock`` on ``<state_dir>/.tsproc.lock`` for the
node's whole life, across helper restarts, so two nodes — in one process or in two — never share
an identity.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import tempfile
from pathlib import Path

import platformdirs

from ..errors import InvalidArgumentError, StateDirLocked

__all__ = ["StateDir"]

_LOCK_NAME = ".tsproc.lock"


class StateDir:
    """A locked, private state directory. :meth:`release` unlocks (and removes a temporary one)."""

    def __init__(self, path: Path, lock_fd: int, temporary: bool) -> None:
        self.path = path
        self._lock_fd: int | None = lock_fd
        self._temporary = temporary

    @classmethod
    def acquire(cls, hostname: str, requested: str | os.PathLike[str] | None, *,
                temporary: bool) -> StateDir:
        """Create (0700) and lock the state directory.

        *requested* None means the default: ``platformdirs.user_state_dir("tsproc")/<hostname>``,
        or a fresh temporary directory (removed on release) when *temporary* is true.

        Raises:
            InvalidArgumentError: the path is not a directory, is not ours, or others can write it.
            StateDirLocked: another node holds it.
        """
        if requested is None and temporary:
            path = Path(tempfile.mkdtemp(prefix=f"tsproc-{hostname}-"))
        else:
            if requested is None:
                path = Path(platformdirs.user_state_dir("tsproc")) / hostname
            else:
                path = Path(requested).expanduser()
            path = path.absolute()
            try:
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise InvalidArgumentError(f"cannot create state_dir {path}: {exc}") from exc
        _check_private(path)
        lock_path = path / _LOCK_NAME
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StateDirLocked(
                    f"state_dir {path} is in use by another node{holder}; give each node its "
                    "own state_dir"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return cls(path, fd, temporary and requested is None)

    def release(self) -> None:
        """Unlock; remove the directory if it was temporary. Idempotent."""
        if self._lock_fd is None:
            return
        fd, self._lock_fd = self._lock_fd, None
        os.close(fd)
        if self._temporary:
            shutil.rmtree(self.path, ignore_errors=True)


def _check_private(path: Path) -> None:
    try:
        st = path.stat()
    except OSError as exc:
        raise InvalidArgumentError(f"state_dir {path} is not usable: {exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidArgumentError(f"state_dir {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise InvalidArgumentError(
            f"state_dir {path} belongs to uid {st.st_uid}, not to this user ({os.geteuid()})"
        )
    if st.st_mode & 0o022:
        raise InvalidArgumentError(
            f"state_dir {path} can be written by other users (mode {stat.S_IMODE(st.st_mode):o}); "
            f"run `chmod 700 {path}` — it holds the node's private keys"
        )


def _read_holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(os.pread(fd, 32, 0).strip() or b"0")
        if pid:
            return f" (pid {pid})"
    return ""
