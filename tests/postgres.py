"""A real PostgreSQL server for the forward tests, in a temporary data directory.

Debian's ``postgresql`` package provides it (``make postgresql``, which ``make pytest`` runs,
installs it where it is missing). Without it the tests that need it skip and say why. The
server listens on a Unix socket in its own directory only: no TCP port, nothing beyond it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

PORT = 5432


@dataclass(frozen=True)
class Postgres:
    """A running server: its socket directory (libpq's ``host``) and port."""

    socket_dir: Path
    port: int = PORT

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / f".s.PGSQL.{self.port}"


def _bindir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@contextmanager
def running_postgres() -> Iterator[Postgres]:
    """Start a PostgreSQL server in a fresh data directory and stop it afterwards.

    initdb refuses to run as root, so as root the server runs as the ``postgres`` user (which
    Debian's package creates) and its directory belongs to that user.
    """
    bindir = _bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (make postgresql installs Debian's package)")
    user: str | None = None
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        user = "postgres"
    base = Path(tempfile.mkdtemp(prefix="tsproc-pg-"))
    data, sockets = base / "data", base / "sockets"
    sockets.mkdir()
    if user is not None:
        for path in (base, sockets):
            os.chown(path, pw.pw_uid, pw.pw_gid)
    env = {**os.environ, "LC_ALL": "C", "PGTZ": "UTC"}
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run([bindir / "initdb", "-D", data, "-U", "postgres", "-A", "trust",
                        "-E", "UTF8", "--no-sync", "--no-instructions"],
                       user=user, env=env, check=True, capture_output=True, timeout=120)
        proc = subprocess.Popen(
            [bindir / "postgres", "-D", data, "-k", sockets, "-p", str(PORT),
             "-c", "listen_addresses=", "-c", "fsync=off", "-c", "max_connections=20"],
            user=user, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        pg = Postgres(sockets)
        deadline = time.monotonic() + 60
        while not pg.socket_path.exists() or not _accepts(pg):
            if proc.poll() is not None:
                assert proc.stderr is not None
                pytest.fail(f"PostgreSQL did not start: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("PostgreSQL did not accept connections within 60 s")
            time.sleep(0.1)
        yield pg
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
        shutil.rmtree(base, ignore_errors=True)


def _accepts(pg: Postgres) -> bool:
    try:
        with psycopg.connect(host=str(pg.socket_dir), port=pg.port, user="postgres",
                             dbname="postgres", connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False
