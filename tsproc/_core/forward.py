"""Forwards and the SOCKS5 proxy: a local endpoint for code that opens its own sockets.

``node.forward(host, port)`` (like ``ssh -L``) and ``node.socks5()`` make a *listening socket on
this machine* — by default a Unix socket in a fresh private directory (0700, the socket 0600),
on request a loopback TCP port — and pass it to the helper, which accepts on it, dials the
tailnet and pumps the bytes itself (``helper/forward.go``). Python never touches a forwarded
byte and sends no message per connection.

Why the host, not the helper, owns the socket: the endpoint then lives exactly as long as the
``async with`` (the host binds, chmods, and later closes and unlinks it) and outlives helper
restarts — the kernel's backlog holds new connections while a helper is replaced, and the next
helper gets the same socket (``forward`` once per helper). The helper also never calls
``listen(2)``, which it forbids itself (docs/design.md §8).

While no helper serves the socket (between helpers, or a node that failed), a guard task here
waits ``node_wait`` seconds; past that it resets what waits in the backlog, and every new
connection, until a helper serves it again. A connection a helper accepted gets the same bound
for the node to run and the dial to connect, then is reset, so a client never waits forever and
never reads an orderly EOF from a forward that could not carry it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import socket
import struct
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, final
from urllib.parse import quote

import trio

from ..errors import AddressInUseError, HelperDiedError, InvalidArgumentError, TsprocError
from .config import check_backlog, check_host, check_port, check_timeout

if TYPE_CHECKING:
    from .generation import Generation


class _Host(Protocol):
    """What an endpoint needs of its node (_Host, which imports this module)."""

    _forwards: set[_Endpoint]
    _nursery: trio.Nursery | None

    async def _live_generation(self) -> Generation: ...

__all__ = ["Forward", "Socks5Proxy", "open_forward", "open_socks5"]

_log = logging.getLogger("tsproc")

#: How long a new connection waits for the node (while a helper restarts, or its dial).
DEFAULT_NODE_WAIT = 30.0
# Bound on asking a helper to stop serving an endpoint that is closing.
_CLOSE_FORWARD_TIMEOUT = 5.0
_SOCKS_USERNAME = "tsproc"
# The helper's bound on any millisecond count (2**31 - 1 ms), in seconds.
_MAX_NODE_WAIT = 2_147_483


class _Endpoint:
    """What a forward and a SOCKS5 proxy share: the listening socket and its lifetime, and
    its installation in each helper of the node."""

    def __init__(self, node: _Host, sock: socket.socket, path: Path | None, *,
                 directory: Path | None, params: dict[str, Any], node_wait: float) -> None:
        self._node = node
        self._sock = sock
        self._path = path
        self._directory = directory  # made by us, removed on close
        self._params = {**params, "conn_timeout_ms": max(1, int(node_wait * 1000))}
        self._node_wait = node_wait
        self._gen: Generation | None = None  # the helper serving (or being given) the socket
        self._forward_id: int | None = None
        self._change = trio.Event()  # set, and replaced, when _gen changes
        self._guard_scope = trio.CancelScope()
        self._closed = False
        self._local_port = sock.getsockname()[1] if path is None else None

    # -- what the application reads --

    @property
    def path(self) -> Path | None:
        """The Unix socket's path, or None for a loopback TCP endpoint."""
        return self._path

    @property
    def closed(self) -> bool:
        """Whether the endpoint is gone (the context has ended, or the node closed)."""
        return self._closed

    def _endpoint_text(self) -> str:
        if self._path is not None:
            return f"unix:{self._path}"
        return f"tcp:127.0.0.1:{self._local_port}"

    # -- the node's side --

    async def _install(self, gen: Generation, *, first: bool = False) -> None:
        """Have *gen* serve the socket. The first installation's errors are the caller's;
        later ones (a new helper) are logged, and the guard resets connections meanwhile."""
        if self._closed or self._gen is gen:
            return
        # From here on the guard leaves the socket to this helper: it accepts nothing itself
        # while the helper is taking it.
        self._gen, self._forward_id = gen, None
        self._changed()
        try:
            reply = await gen.request("forward", self._params, fd=self._sock.fileno())
        except HelperDiedError:
            return  # the next helper gets it (NodeLifecycle._start_generation)
        except TsprocError as exc:
            if self._gen is gen:
                self._gen = None
                self._changed()
            if first:
                raise
            _log.warning("%r: the new helper refused it: %s", self, exc)
            return
        self._forward_id = int(reply.result["forward"])
        if self._closed:  # closed while the helper was taking it
            await self._uninstall()

    def _changed(self) -> None:
        self._change.set()
        self._change = trio.Event()

    async def _uninstall(self) -> None:
        gen, forward_id = self._gen, self._forward_id
        self._forward_id = None
        if gen is None or forward_id is None or gen.died.is_set():
            return
        with trio.move_on_after(_CLOSE_FORWARD_TIMEOUT), contextlib.suppress(TsprocError):
            await gen.request("close_forward", {"forward": forward_id},
                              limit=_CLOSE_FORWARD_TIMEOUT)

    def _helper_has_it(self) -> bool:
        """Whether a live helper serves the socket (or is being given it)."""
        gen = self._gen
        return gen is not None and not gen.died.is_set()

    async def _guard(self) -> None:
        """Reset waiting connections while no helper has served the socket for node_wait."""
        with self._guard_scope:
            while True:
                change = self._change
                gen = self._gen
                if gen is not None and not gen.died.is_set():
                    await _first_of(gen.died, change)
                    continue
                with trio.move_on_after(self._node_wait):
                    await change.wait()
                    continue
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._reset_waiting)
                    await change.wait()
                    nursery.cancel_scope.cancel()

    async def _reset_waiting(self) -> None:
        while True:
            try:
                await trio.lowlevel.wait_readable(self._sock)
            except trio.ClosedResourceError:
                return  # _close_endpoint, which also cancels the guard
            if self._closed or self._helper_has_it():
                return
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                continue  # a helper took it first
            _reset(conn)

    def _close_endpoint(self) -> None:
        """Remove the endpoint now: stop the guard, close the socket, unlink the path."""
        self._closed = True
        self._node._forwards.discard(self)
        self._guard_scope.cancel()
        sock = self._sock
        if sock.fileno() >= 0:
            if self._path is None:
                # A helper that was not told (it hung, or died mid-request) may still hold a
                # duplicate: shutting the listening TCP socket down ends it for every holder.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            trio.lowlevel.notify_closing(sock)
            sock.close()
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
        if self._directory is not None:
            with contextlib.suppress(OSError):
                self._directory.rmdir()

    async def aclose(self) -> None:
        """Remove the endpoint (what leaving the ``async with`` does). Idempotent."""
        if not self._closed:
            self._closed = True
            self._guard_scope.cancel()
            with trio.CancelScope(shield=True):
                await self._uninstall()
            self._close_endpoint()
        await trio.lowlevel.checkpoint()


@final
class Forward(_Endpoint):
    """A local endpoint whose every connection is carried to a tailnet ``host:port``.

    Made by :meth:`tsproc.Node.forward`; ``target`` is the tailnet ``(host, port)`` it carries
    connections to. ``host`` and ``port`` are what a client connects to:
    for a Unix socket, the private directory and the target's port, which is how libpq
    (psycopg, asyncpg, ``psql``) names a socket (``<dir>/.s.PGSQL.<port>``); for loopback TCP,
    ``127.0.0.1`` and the local port.
    """

    def __init__(self, node: _Host, sock: socket.socket, path: Path | None, *,
                 directory: Path | None, target: tuple[str, int], node_wait: float) -> None:
        super().__init__(node, sock, path, directory=directory, node_wait=node_wait,
                         params={"kind": "tcp", "host": target[0], "port": target[1]})
        self.target = target

    @property
    def host(self) -> str:
        """What a client passes as its host: the socket's directory, or ``127.0.0.1``."""
        return "127.0.0.1" if self._path is None else str(self._path.parent)

    @property
    def port(self) -> int:
        """What a client passes as its port: the target's (Unix), or the local TCP port."""
        return self.target[1] if self._local_port is None else self._local_port

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Forward {self.target[0]}:{self.target[1]} at {self._endpoint_text()}, {state}>"


@final
class Socks5Proxy(_Endpoint):
    """A SOCKS5 proxy (CONNECT, username/password) that reaches tailnet names and addresses.

    Made by :meth:`tsproc.Node.socks5`. :attr:`url` carries a fresh credential; nothing else
    shows it (not the repr, not a log line).
    """

    def __init__(self, node: _Host, sock: socket.socket, path: Path | None, *,
                 directory: Path | None, node_wait: float) -> None:
        self._password = secrets.token_urlsafe(24)
        super().__init__(node, sock, path, directory=directory, node_wait=node_wait,
                         params={"kind": "socks5", "username": _SOCKS_USERNAME,
                                 "password": self._password})

    @property
    def username(self) -> str:
        """The proxy's user name (not a secret)."""
        return _SOCKS_USERNAME

    @property
    def password(self) -> str:
        """The proxy's password: give it only to the clients that should use the proxy."""
        return self._password

    @property
    def url(self) -> str:
        """``socks5h://user:password@127.0.0.1:port``, or for a Unix socket curl's form
        ``socks5h://user:password@localhost/path`` (``h``: names are resolved by the node)."""
        auth = f"{quote(_SOCKS_USERNAME, safe='')}:{quote(self._password, safe='')}"
        if self._path is not None:
            return f"socks5h://{auth}@localhost{quote(str(self._path))}"
        return f"socks5h://{auth}@127.0.0.1:{self._local_port}"

    @property
    def address(self) -> str | tuple[str, int]:
        """The endpoint: the Unix socket's path, or ``("127.0.0.1", port)``."""
        if self._path is not None:
            return str(self._path)
        assert self._local_port is not None
        return ("127.0.0.1", self._local_port)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Socks5Proxy at {self._endpoint_text()}, credential hidden, {state}>"


@asynccontextmanager
async def open_forward(node: _Host, host: str, port: int, *,
                       unix_dir: str | os.PathLike[str] | None, local_port: int | None,
                       backlog: int, node_wait: float) -> AsyncIterator[Forward]:
    """:meth:`tsproc.Node.forward`'s implementation."""
    check_host(host)
    check_port(port)
    wait = _check_node_wait(node_wait)
    sock, path, directory = _listening_socket(unix_dir, local_port, f".s.PGSQL.{port}",
                                              check_backlog(backlog))
    endpoint = Forward(node, sock, path, directory=directory, target=(host, port),
                       node_wait=wait)
    async with _served(node, endpoint):
        yield endpoint


@asynccontextmanager
async def open_socks5(node: _Host, *, unix_dir: str | os.PathLike[str] | None,
                      local_port: int | None, backlog: int,
                      node_wait: float) -> AsyncIterator[Socks5Proxy]:
    """:meth:`tsproc.Node.socks5`'s implementation."""
    wait = _check_node_wait(node_wait)
    sock, path, directory = _listening_socket(unix_dir, local_port, "socks5.sock",
                                              check_backlog(backlog))
    endpoint = Socks5Proxy(node, sock, path, directory=directory, node_wait=wait)
    async with _served(node, endpoint):
        yield endpoint


@asynccontextmanager
async def _served(node: _Host, endpoint: _Endpoint) -> AsyncIterator[None]:
    try:
        gen = await node._live_generation()
        assert node._nursery is not None
        node._forwards.add(endpoint)
        await endpoint._install(gen, first=True)
        node._nursery.start_soon(endpoint._guard)
        yield
    finally:
        await endpoint.aclose()


async def _first_of(a: trio.Event, b: trio.Event) -> None:
    """Wait until either event is set."""
    async with trio.open_nursery() as nursery:

        async def wait(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(wait, a)
        nursery.start_soon(wait, b)


def _check_node_wait(node_wait: object) -> float:
    wait = check_timeout(node_wait, "node_wait")
    if wait is None:
        # The helper needs a bound for each connection's dial; "forever" would leave a
        # client hanging on a target that never answers.
        raise InvalidArgumentError("node_wait must be a positive number of seconds, not None")
    if wait > _MAX_NODE_WAIT:
        raise InvalidArgumentError(
            f"node_wait must be at most {_MAX_NODE_WAIT} s (about 24 days), got {node_wait!r}")
    return wait


def _listening_socket(unix_dir: str | os.PathLike[str] | None, local_port: int | None,
                      name: str, backlog: int) -> tuple[socket.socket, Path | None, Path | None]:
    """The endpoint's listening socket, its path and the directory made for it."""
    if local_port is not None:
        if unix_dir is not None:
            raise InvalidArgumentError("give unix_dir or local_port, not both")
        if isinstance(local_port, bool) or not isinstance(local_port, int) \
                or not 0 <= local_port <= 65535:
            raise InvalidArgumentError(
                f"local_port must be an integer from 0 (any free port) to 65535, "
                f"got {local_port!r}")
        return _loopback_socket(local_port, backlog), None, None
    directory = _private_directory(unix_dir)
    path = directory / name
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fsencode(path))
        # The 0700 directory already keeps other users out; 0600 says the same on the socket
        # itself, and the helper checks each peer's uid (SO_PEERCRED) whatever the modes.
        os.chmod(path, 0o600)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            path.unlink()
        with contextlib.suppress(OSError):
            directory.rmdir()
        raise InvalidArgumentError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    return sock, path, directory


def _private_directory(unix_dir: str | os.PathLike[str] | None) -> Path:
    if unix_dir is None:
        return Path(tempfile.mkdtemp(prefix="tsproc-forward-"))  # 0700
    try:
        directory = Path(os.fspath(unix_dir)).absolute()
    except TypeError:
        raise InvalidArgumentError(f"unix_dir must be a path, got {unix_dir!r}") from None
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        raise InvalidArgumentError(
            f"{directory} already exists: a forward makes its own private directory, so "
            "give a path that does not exist yet (or none, for a temporary one)") from None
    except OSError as exc:
        raise InvalidArgumentError(
            f"cannot create the directory {directory}: {exc.strerror or exc}") from None
    os.chmod(directory, 0o700)  # whatever the umask
    # sun_path holds 108 bytes on Linux, 104 on macOS.
    if len(os.fsencode(directory / ".s.PGSQL.65535")) >= 104:
        directory.rmdir()
        raise InvalidArgumentError(f"{directory} is too long for a Unix socket path")
    return directory


def _loopback_socket(port: int, backlog: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise AddressInUseError(f"127.0.0.1:{port} is in use", code="address_in_use") \
                from None
        raise InvalidArgumentError(f"cannot listen on 127.0.0.1:{port}: {exc}") from None
    return sock


def _reset(conn: socket.socket) -> None:
    """Close *conn* abortively: a TCP peer reads a reset; a Unix one, a reset if it had sent
    anything (AF_UNIX has no other way to say it)."""
    with contextlib.suppress(OSError):
        if conn.family != socket.AF_UNIX:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
