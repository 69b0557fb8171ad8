"""Blocking sockets on bridged tailnet connections, the listener that hands them out, and
calls into the node's trio thread that Ctrl-C interrupts.

Private to :mod:`tsproc.blocking`, which re-exports :class:`TailnetSocket` and :class:`Listener`.
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import outcome

from .._faces.bridge import BridgedConn
from .._faces.trio_thread import TrioThread

T = TypeVar("T")

def call(thread: TrioThread, fn: Callable[[], Awaitable[T]],
          dispose: Callable[[T], None] | None = None) -> T:
    """Run *fn* in the trio thread and wait for it. Interruptible: on KeyboardInterrupt (or any
    exception while waiting) *fn* is cancelled, and a value it still produces is disposed of."""
    done = threading.Event()
    box: list[outcome.Outcome[T]] = []

    def on_done(result: outcome.Outcome[T]) -> None:
        box.append(result)
        done.set()

    call = thread.submit(fn, on_done)
    try:
        done.wait()  # a lock wait: signals interrupt it (POSIX), so Ctrl-C works here
    except BaseException:
        if not call.abandon(dispose) and box:
            result = box[0]
            if dispose is not None and isinstance(result, outcome.Value):
                dispose(result.value)
        raise
    return box[0].unwrap()


class _ConnSocket:
    """What a socket carrying a bridged tailnet connection adds to the socket it is: the
    tailnet addresses, the honest EOF (an empty read is checked with the node), and telling
    the node when the fd is closed. Mixed into :class:`TailnetSocket` and into the TLS socket
    that ``SSLContext.wrap_socket`` makes of one (:func:`_tls_socket_class`)."""

    _tsproc_conn: BridgedConn | None = None
    _tsproc_thread: TrioThread | None = None
    _tsproc_eof_checked = False

    @property
    def local_addr(self) -> tuple[str, int]:
        """This node's tailnet (ip, port)."""
        return self._tsproc_conn.local_addr if self._tsproc_conn else ("", 0)

    @property
    def remote_addr(self) -> tuple[str, int]:
        """The peer's tailnet (ip, port); pass it to :meth:`Node.whois`."""
        return self._tsproc_conn.remote_addr if self._tsproc_conn else ("", 0)

    def getpeername(self) -> tuple[str, int]:
        return self.remote_addr

    def getsockname(self) -> tuple[str, int]:
        return self.local_addr

    def _check_eof(self) -> None:
        """An empty read: return if the connection ended cleanly, else raise
        ConnectionResetError (asks the node once)."""
        if self._tsproc_eof_checked:
            return
        conn, thread = self._tsproc_conn, self._tsproc_thread
        if conn is None or thread is None:
            raise ConnectionResetError("the tailnet connection is closed")
        with BridgedConn.verifying_eof():
            call(thread, conn.verify_eof)
        self._tsproc_eof_checked = True

    def _real_close(self, _ss: Any = socket.socket) -> None:
        # socket.close() and the last makefile() closing both end here (http.client closes the
        # socket while its response still reads through makefile: the connection must live
        # until then).
        try:
            super()._real_close()  # type: ignore[misc]
        finally:
            conn, self._tsproc_conn = self._tsproc_conn, None
            if conn is not None:
                conn.close_soon()


class TailnetSocket(_ConnSocket, socket.socket):
    """A :class:`socket.socket` carrying one tailnet TCP connection.

    Use it as any connected stream socket (``sendall``, ``recv``, ``makefile``, ``settimeout``,
    ``shutdown(SHUT_WR)`` to half-close). Differences from a plain one: ``recv`` returns ``b""``
    only for a clean end and raises :class:`ConnectionResetError` when the connection was cut;
    ``getpeername()``/``getsockname()`` give the tailnet addresses (the kernel socket is a
    socketpair with none); it cannot be ``dup()``-ed or ``detach()``-ed (the node must see its
    close to end the tailnet connection), but ``ssl.SSLContext.wrap_socket`` works on it: the
    TLS socket it returns carries the connection on, with the same honest EOF and close.
    """

    @classmethod
    def _adopt(cls, conn: BridgedConn, thread: TrioThread) -> TailnetSocket:
        try:
            sock = cls(fileno=conn.take_fd())
        except BaseException:
            conn.close_soon()
            raise
        sock._tsproc_conn = conn
        sock._tsproc_thread = thread
        sock.setblocking(True)
        return sock

    def __repr__(self) -> str:
        conn = self._tsproc_conn
        if conn is None or self.fileno() < 0:
            return "<tsproc.blocking.TailnetSocket [closed]>"
        local, remote = conn.local_addr, conn.remote_addr
        return (f"<tsproc.blocking.TailnetSocket fd={self.fileno()} "
                f"{local[0]}:{local[1]} <-> {remote[0]}:{remote[1]}>")

    # -- honest EOF: every receive path checks an empty read with the node --

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        if not data and bufsize > 0:
            self._check_eof()
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        n = super().recv_into(buffer, nbytes, flags)
        if n == 0 and (nbytes or len(memoryview(buffer))) > 0:
            self._check_eof()
        return n

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, Any]:
        data = self.recv(bufsize, flags)
        return data, self.remote_addr

    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> tuple[int, Any]:
        return self.recv_into(buffer, nbytes, flags), self.remote_addr

    def recvmsg(self, bufsize: int, ancbufsize: int = 0, flags: int = 0) -> Any:
        data, ancdata, msg_flags, address = super().recvmsg(bufsize, ancbufsize, flags)
        if not data and bufsize > 0:
            self._check_eof()
        return data, ancdata, msg_flags, address

    def recvmsg_into(self, buffers: Any, ancbufsize: int = 0, flags: int = 0) -> Any:
        result = super().recvmsg_into(buffers, ancbufsize, flags)
        if result[0] == 0 and sum(len(memoryview(b)) for b in buffers) > 0:
            self._check_eof()
        return result

    def dup(self) -> TailnetSocket:
        raise OSError("a tailnet socket cannot be duplicated (its node must see it close)")

    def detach(self) -> int:
        """Refused, but for ``SSLContext.wrap_socket``: the TLS socket it makes takes the fd
        over, and with it the connection's bookkeeping (see :func:`_tls_socket_class`)."""
        tls = _ssl_socket_taking_over(self)
        if tls is None:
            raise OSError("a tailnet socket cannot be detached (its node must see it close); "
                          "ssl.SSLContext.wrap_socket works on it")
        tls.__class__ = _tls_socket_class(type(tls))
        conn, self._tsproc_conn = self._tsproc_conn, None
        tls._tsproc_conn = conn  # type: ignore[attr-defined]
        tls._tsproc_thread = self._tsproc_thread  # type: ignore[attr-defined]
        return super().detach()


# -- TLS over a tailnet socket: what SSLContext.wrap_socket makes of one --
#
# ssl.SSLContext.wrap_socket(sock) is SSLSocket._create: it makes an SSLSocket on sock's fd
# number and then calls sock.detach(), keeping no reference to sock. A tailnet socket must not
# lose its bookkeeping there (the node would never learn of the close, and an empty TLS read
# after a suppressed "ragged" EOF would pass a helper's death off as a clean end). So its
# detach() hands the bookkeeping to the SSLSocket being made, which it finds as _create's
# `self`, and makes it a subclass with _ConnSocket mixed in. Any other caller of detach() is
# refused. This is the one place tsproc depends on ssl.py's internals: the code object of
# SSLSocket._create and the name of its local; tests/test_faces_tls.py pins both.
_SSL_CREATE_CODE = ssl.SSLSocket._create.__func__.__code__  # type: ignore[attr-defined]
_tls_classes: dict[type[ssl.SSLSocket], type[ssl.SSLSocket]] = {}


def _ssl_socket_taking_over(sock: socket.socket) -> ssl.SSLSocket | None:
    frame = sys._getframe(2)  # detach() <- SSLSocket._create
    if frame.f_code is not _SSL_CREATE_CODE:
        return None
    tls = frame.f_locals.get("self")
    if not isinstance(tls, ssl.SSLSocket) or tls.fileno() != sock.fileno():
        return None
    return tls


def _tls_socket_class(base: type[ssl.SSLSocket]) -> type[ssl.SSLSocket]:
    """*base* (the context's ``sslsocket_class``) with a tailnet connection's bookkeeping."""
    cls = _tls_classes.get(base)
    if cls is None:
        cls = type(f"Tailnet{base.__name__}", (_TLSConnSocket, base), {
            "__module__": __name__,
            "__doc__": "A TLS socket over a tailnet connection (SSLContext.wrap_socket).",
        })
        _tls_classes[base] = cls
    return cls


class _TLSConnSocket(_ConnSocket):
    """The reads of an SSLSocket whose empty result the node confirms: a TLS socket returns
    ``b""`` for a close_notify, and also for a bare EOF (``suppress_ragged_eofs``, the
    default), which is what a dead helper looks like."""

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        data: bytes = super().recv(buflen, flags)  # type: ignore[misc]
        if not data and buflen > 0:
            self._check_eof()
        return data

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        n: int = super().recv_into(buffer, nbytes, flags)  # type: ignore[misc]
        if n == 0 and (nbytes or len(memoryview(buffer))) > 0:
            self._check_eof()
        return n

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        data = super().read(len, buffer)  # type: ignore[misc]
        if not data and len > 0:
            self._check_eof()
        return data
