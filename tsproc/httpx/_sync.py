"""httpcore's network backend on a :class:`tsproc.blocking.Node`, for ``httpx.Client``: each TCP
connection a tailnet dial as a blocking :class:`~tsproc.blocking.TailnetSocket`, TLS over it
with ``SSLContext.wrap_socket`` (which a tailnet socket supports).

Private to :mod:`tsproc.httpx`.
"""

from __future__ import annotations

import select
import socket
import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, final

import httpcore

from ._errors import (
    NO_UNIX_SOCKETS,
    OS_READ_ERRORS,
    OS_TLS_ERRORS,
    OS_WRITE_ERRORS,
    dial_errors,
    map_exceptions,
)

if TYPE_CHECKING:
    from ..blocking import Node

__all__ = ["SyncNetworkBackend"]

@final
class _SyncNetworkStream(httpcore.NetworkStream):
    """httpcore's view of one tailnet connection as a blocking socket (plain, or TLS)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with map_exceptions(OS_READ_ERRORS):
            self._sock.settimeout(timeout)
            return self._sock.recv(max_bytes)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        with map_exceptions(OS_WRITE_ERRORS):
            self._sock.settimeout(timeout)
            self._sock.sendall(buffer)

    def close(self) -> None:
        self._sock.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        try:
            with map_exceptions(OS_TLS_ERRORS):
                self._sock.settimeout(timeout)
                tls = ssl_context.wrap_socket(self._sock, server_hostname=server_hostname)
        except BaseException:
            self._sock.close()
            raise
        return _SyncNetworkStream(tls)

    def get_extra_info(self, info: str) -> Any:
        sock = self._sock
        if info == "client_addr":
            return sock.getsockname()
        if info == "server_addr":
            return sock.getpeername()
        if info == "ssl_object" and isinstance(sock, ssl.SSLSocket):
            return sock._sslobj  # type: ignore[attr-defined] # httpcore's own sync backend's
        if info == "socket":
            return sock
        if info == "is_readable":
            if sock.fileno() < 0:
                return True
            return bool(select.select([sock], [], [], 0)[0])
        return None


@final
class SyncNetworkBackend(httpcore.NetworkBackend):
    """An httpcore network backend whose TCP connections are tailnet dials from a blocking
    *node*."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        with map_exceptions(dial_errors()):
            sock = self._node.dial(host, port, timeout=timeout)
        return _SyncNetworkStream(sock)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None,
                            ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError(NO_UNIX_SOCKETS)
