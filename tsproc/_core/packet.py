"""UDP sockets on the tailnet, over the AF_UNIX packet socketpairs the helper passes
(docs/protocol.md §6a): every datagram carries an address header, packed and unpacked here."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final, final

import trio

from .._util import NoPublicConstructor
from ..errors import InvalidArgumentError
from .streams import adopt_socket, split_addr

__all__ = ["MAX_DATAGRAM", "TailnetPacketConn"]

_FAMILY_SIZE: Final = {4: 4, 6: 16}
MAX_DATAGRAM: Final = 65535


def _pack_addr(addr: tuple[str, int]) -> bytes:
    try:
        ip = ipaddress.ip_address(addr[0])
        port = int(addr[1])
    except (ValueError, TypeError, IndexError):
        raise InvalidArgumentError(
            f"a UDP address is (tailnet IP, port), got {addr!r}; use Node.dial_udp for names"
        ) from None
    if not 0 < port <= 65535:
        raise InvalidArgumentError(f"UDP port must be from 1 to 65535, got {port}")
    return bytes([ip.version]) + ip.packed + port.to_bytes(2, "big")


def _unpack_addr(message: bytes) -> tuple[tuple[str, int], bytes]:
    size = _FAMILY_SIZE.get(message[0]) if message else None
    if size is None or len(message) < 1 + size + 2:
        raise trio.BrokenResourceError("malformed datagram header from the helper")
    ip = ipaddress.ip_address(message[1 : 1 + size])
    port = int.from_bytes(message[1 + size : 3 + size], "big")
    return (str(ip), port), message[3 + size :]


@contextmanager
def _translate_socket_errors() -> Iterator[None]:
    """OS errors on the socketpair as trio's stream errors (what SocketStream does for TCP)."""
    try:
        yield
    except OSError as exc:
        raise trio.BrokenResourceError(
            f"the helper's end of this UDP socket is gone: {exc}"
        ) from exc


@final
class TailnetPacketConn(metaclass=NoPublicConstructor):
    """A UDP socket on the tailnet (:meth:`Node.listen_packet`, :meth:`Node.dial_udp`).

    Datagrams keep their boundaries and carry their peer's tailnet address. Like UDP, delivery
    is not guaranteed: when this side reads too slowly, the helper drops datagrams rather than
    blocking. A helper restart ends the socket: calls then raise
    :class:`trio.BrokenResourceError`; open a new one.

    Attributes:
        local_addr: this node's (tailnet IP, port).
        remote_addr: the peer's (ip, port) for a dialled socket, else None.
    """

    def __init__(self, fd: int, local_addr: object, remote_addr: object = None,
                 on_close: Callable[[], None] | None = None) -> None:
        sock = adopt_socket(fd, None)
        self._sock = trio.socket.from_stdlib_socket(sock)
        self.local_addr = split_addr(local_addr)
        self.remote_addr = split_addr(remote_addr) if remote_addr else None
        self._on_close = on_close
        self._closed = False

    def __repr__(self) -> str:
        peer = f" -> {self.remote_addr[0]}:{self.remote_addr[1]}" if self.remote_addr else ""
        return f"<TailnetPacketConn {self.local_addr[0]}:{self.local_addr[1]}{peer}>"

    async def sendto(self, data: bytes | bytearray | memoryview, addr: tuple[str, int]) -> None:
        """Send one datagram to *addr*, a (tailnet IP, port) tuple."""
        header = _pack_addr(addr)
        if len(data) > MAX_DATAGRAM:
            raise InvalidArgumentError(f"a UDP datagram holds at most {MAX_DATAGRAM} bytes")
        self._check_open()
        with _translate_socket_errors():
            await self._sock.send(header + bytes(data))

    async def recvfrom(self) -> tuple[bytes, tuple[str, int]]:
        """Receive one datagram: (payload, (source IP, source port))."""
        self._check_open()
        with _translate_socket_errors():
            message = await self._sock.recv(MAX_DATAGRAM + 19)
        if not message:
            self._check_open()
            raise trio.BrokenResourceError(
                "this UDP socket ended: its helper restarted or the node closed"
            )
        addr, payload = _unpack_addr(message)
        return payload, addr

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send one datagram to the peer of a dialled socket."""
        if self.remote_addr is None:
            raise InvalidArgumentError("send() needs a dialled socket; use sendto()")
        await self.sendto(data, self.remote_addr)

    async def receive(self) -> bytes:
        """Receive one datagram's payload (any source)."""
        payload, _ = await self.recvfrom()
        return payload

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this UDP socket is closed")

    async def aclose(self) -> None:
        """Close the socket. Idempotent."""
        self.close_now()
        await trio.lowlevel.checkpoint()

    def close_now(self) -> None:
        if not self._closed:
            self._closed = True
            self._sock.close()
            if self._on_close is not None:
                self._on_close()

    async def __aenter__(self) -> TailnetPacketConn:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
