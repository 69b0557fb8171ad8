"""A tailnet UDP socket handed to another world, as :class:`~tsproc._faces.bridge.BridgedConn`
hands a TCP one: the trio :class:`~tsproc.TailnetPacketConn` stays in the node's thread (it
keeps the helper's bookkeeping), and the face moves datagrams through a duplicate of its fd
(a datagram socketpair whose every message carries the peer's address, docs/protocol.md §6a).

The address header is packed and unpacked by the trio conn's own functions, so the faces
speak exactly the wire format the trio node does. Nothing here does I/O: the faces do, with
asyncio's ``sock_recv``/``sock_sendall`` or with blocking ``recv``/``send``.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import final

from .._core.packet import MAX_DATAGRAM, TailnetPacketConn, _pack_addr, _unpack_addr
from .._core.types import Addr
from ..errors import InvalidArgumentError, NodeClosedError
from .trio_thread import TrioThread

__all__ = ["RECEIVE_SIZE", "BridgedPacketConn"]

# A datagram's payload and its largest header (a family byte, 16 address bytes, 2 port bytes).
RECEIVE_SIZE = MAX_DATAGRAM + 19


@final
class BridgedPacketConn:
    """A tailnet UDP socket whose datagrams another thread moves through a duplicate fd."""

    def __init__(self, thread: TrioThread, conn: TailnetPacketConn) -> None:
        self._thread = thread
        self._conn = conn
        self.local_addr: Addr = conn.local_addr
        self.remote_addr: Addr | None = conn.remote_addr
        self._lock = threading.Lock()
        # fd B: the face's socket on the same socketpair end (trio thread; never blocks).
        self._sock: socket.socket | None = socket.socket(
            fileno=os.dup(conn._sock.fileno()))

    def __repr__(self) -> str:
        peer = f" -> {self.remote_addr[0]}:{self.remote_addr[1]}" if self.remote_addr else ""
        return f"<BridgedPacketConn {self.local_addr[0]}:{self.local_addr[1]}{peer}>"

    def take_socket(self) -> socket.socket:
        """fd B as a socket; from now on the caller owns it (closes it, then calls close)."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is None:
            raise NodeClosedError("this UDP socket was closed")
        return sock

    def close(self) -> None:
        """Close the trio side (the helper forgets the socket), from any thread. Idempotent."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        self._thread.run_sync_soon(self._conn.close_now)

    def message(self, data: bytes | bytearray | memoryview,
                addr: tuple[str, int] | None) -> bytes:
        """The wire message that sends *data* to *addr* (None: the dialled peer)."""
        if addr is None:
            if self.remote_addr is None:
                raise InvalidArgumentError("send() needs a dialled socket; use sendto()")
            addr = self.remote_addr
        header = _pack_addr(addr)
        if len(data) > MAX_DATAGRAM:
            raise InvalidArgumentError(f"a UDP datagram holds at most {MAX_DATAGRAM} bytes")
        return header + bytes(data)

    @staticmethod
    def datagram(message: bytes) -> tuple[bytes, tuple[str, int]]:
        """(payload, source) of a received wire message; an empty one means the socket ended
        (its helper restarted, or the node closed): ConnectionResetError."""
        if not message:
            raise ConnectionResetError(
                "this UDP socket ended: its helper restarted or the node closed")
        try:
            addr, payload = _unpack_addr(message)
        except Exception as exc:  # trio.BrokenResourceError: a malformed header
            raise ConnectionResetError(str(exc)) from None
        return payload, addr
