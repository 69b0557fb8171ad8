"""A tailnet UDP socket for blocking code.

Private to :mod:`tsproc.blocking`, which re-exports :class:`PacketSocket`.
"""

from __future__ import annotations

import select
import time
from typing import final

from .._core.config import check_timeout
from .._core.types import Addr
from .._faces.packet import RECEIVE_SIZE, BridgedPacketConn
from ..errors import NodeTimeoutError

__all__ = ["PacketSocket"]


@final
class PacketSocket:
    """A UDP socket on the tailnet for blocking code (:meth:`Node.listen_packet`,
    :meth:`Node.dial_udp`): ``sendto(data, (ip, port))`` / ``recvfrom(timeout=None)``, and for
    a dialled one ``send`` / ``recv``. Datagrams keep their boundaries; like UDP, delivery is
    not guaranteed. A helper restart ends the socket (:class:`ConnectionResetError`).
    ``fileno()`` is readable when a datagram waits (for ``select``); Ctrl-C interrupts a wait.
    """

    def __init__(self, bridged: BridgedPacketConn) -> None:
        self._bridged = bridged
        self._sock = bridged.take_socket()
        self._sock.setblocking(True)
        self.local_addr: Addr = bridged.local_addr
        """This node's (tailnet IP, port)."""
        self.remote_addr: Addr | None = bridged.remote_addr
        """The peer's (ip, port) for a dialled socket, else None."""

    @classmethod
    def _adopt(cls, bridged: BridgedPacketConn) -> PacketSocket:
        try:
            return cls(bridged)
        except BaseException:
            bridged.close()
            raise

    def __repr__(self) -> str:
        peer = f" -> {self.remote_addr[0]}:{self.remote_addr[1]}" if self.remote_addr else ""
        state = " closed" if self._sock.fileno() < 0 else ""
        return (f"<tsproc.blocking.PacketSocket {self.local_addr[0]}:{self.local_addr[1]}"
                f"{peer}{state}>")

    def fileno(self) -> int:
        return self._sock.fileno()

    def sendto(self, data: bytes | bytearray | memoryview, addr: tuple[str, int]) -> None:
        """Send one datagram to *addr*, a (tailnet IP, port)."""
        self._sock.send(self._bridged.message(data, addr))

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send one datagram to the peer of a dialled socket."""
        self._sock.send(self._bridged.message(data, None))

    def recvfrom(self, *, timeout: float | None = None) -> tuple[bytes, tuple[str, int]]:
        """Receive one datagram: (payload, (source IP, source port)).

        Raises:
            NodeTimeoutError: none within *timeout* seconds (None: wait as long as it takes).
            ConnectionResetError: the socket ended (its helper restarted, the node closed).
        """
        timeout = check_timeout(timeout)
        if timeout is not None:
            deadline = time.monotonic() + timeout
            while not select.select([self._sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
                if time.monotonic() >= deadline:
                    raise NodeTimeoutError(f"no datagram within {timeout:g} s")
        return BridgedPacketConn.datagram(self._sock.recv(RECEIVE_SIZE))

    def recv(self, *, timeout: float | None = None) -> bytes:
        """Receive one datagram's payload (any source); see :meth:`recvfrom`."""
        payload, _ = self.recvfrom(timeout=timeout)
        return payload

    def close(self) -> None:
        """Close the socket. Idempotent."""
        self._sock.close()
        self._bridged.close()

    def __enter__(self) -> PacketSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
