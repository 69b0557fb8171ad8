"""A tailnet listener and a tailnet UDP socket for asyncio code: :class:`Listener` hands out
asyncio streams, :class:`PacketConn` sends and receives datagrams in the caller's loop.

Private to :mod:`tsproc.aio`, which re-exports the public names.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from functools import partial
from typing import final

import trio

from .. import NodeState, TailnetListener
from .._core.types import Addr
from .._faces.bridge import BridgedConn, NodeRuntime
from .._faces.packet import RECEIVE_SIZE, BridgedPacketConn
from ..errors import NodeClosedError
from ._streams import DEFAULT_LIMIT, TailnetStreamWriter, call_in, open_streams

__all__ = ["Listener", "PacketConn"]


@final
class Listener:
    """Accepts tailnet connections on one port (:meth:`Node.listen` and its kin) as asyncio
    streams: ``reader, writer = await listener.accept()``; ``async for`` gives the same pairs.
    Close it with ``await listener.aclose()`` or ``async with``: the port is free again once
    that returns, and connections not yet accepted are reset.

    ``accept(ssl=context)`` runs TLS in your loop with *context*'s certificate (say, one made
    from :meth:`Node.cert_pair`), as :func:`asyncio.start_server` does with ``ssl=``; the
    listeners of :meth:`Node.listen_tls` and :meth:`Node.listen_funnel` need none (the helper
    terminates TLS for them and their streams carry plaintext).
    """

    def __init__(self, runtime: NodeRuntime, hostname: str, listener: TailnetListener) -> None:
        self._runtime = runtime
        self._hostname = hostname
        self._listener = listener
        self.port = listener.port
        """The tailnet port (0 for :meth:`Node.listen_any_port`)."""

    def __repr__(self) -> str:
        state = "closed" if self._listener.closed else "listening"
        return f"<tsproc.aio.Listener {self._hostname}:{self.port} {state}>"

    async def accept(self, *, ssl: ssl_module.SSLContext | None = None,
                     limit: int = DEFAULT_LIMIT,
                     ) -> tuple[asyncio.StreamReader, TailnetStreamWriter]:
        """The next connection, as a (reader, writer) pair; ``writer.remote_addr`` is the
        caller (for :meth:`Node.whois`) and ``writer.local_addr`` the address it dialled.

        Raises:
            OSError: the listener is closed (or its node: then NodeClosedError).
        """
        runtime = self._runtime
        try:
            conn = await call_in(runtime, partial(runtime.accept, self._listener),
                                 dispose=BridgedConn.close_soon)
        except trio.ClosedResourceError:
            raise OSError("the listener is closed") from None
        return await open_streams(runtime, conn, limit, ssl=ssl, server_side=True)

    def __aiter__(self) -> Listener:
        return self

    async def __anext__(self) -> tuple[asyncio.StreamReader, TailnetStreamWriter]:
        """The next connection; the iteration ends when the listener or its node closes."""
        try:
            return await self.accept()
        except (OSError, NodeClosedError):
            if self._listener.closed or self._runtime.node.state is NodeState.CLOSED:
                raise StopAsyncIteration from None
            raise

    async def aclose(self) -> None:
        """Stop listening; returns once the helper has released the port. Idempotent."""
        await call_in(self._runtime, self._listener.aclose)

    async def __aenter__(self) -> Listener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@final
class PacketConn:
    """A UDP socket on the tailnet for asyncio code (:meth:`Node.listen_packet`,
    :meth:`Node.dial_udp`): ``await sendto(data, (ip, port))`` / ``await recvfrom()``, and for
    a dialled one ``send`` / ``receive``. Datagrams keep their boundaries; like UDP, delivery
    is not guaranteed. A helper restart ends the socket (:class:`ConnectionResetError`).
    """

    def __init__(self, bridged: BridgedPacketConn) -> None:
        self._bridged = bridged
        self._sock = bridged.take_socket()
        self._sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self.local_addr: Addr = bridged.local_addr
        """This node's (tailnet IP, port)."""
        self.remote_addr: Addr | None = bridged.remote_addr
        """The peer's (ip, port) for a dialled socket, else None."""

    def __repr__(self) -> str:
        peer = f" -> {self.remote_addr[0]}:{self.remote_addr[1]}" if self.remote_addr else ""
        state = " closed" if self._sock.fileno() < 0 else ""
        return f"<tsproc.aio.PacketConn {self.local_addr[0]}:{self.local_addr[1]}{peer}{state}>"

    async def sendto(self, data: bytes | bytearray | memoryview, addr: tuple[str, int]) -> None:
        """Send one datagram to *addr*, a (tailnet IP, port)."""
        await self._loop.sock_sendall(self._sock, self._bridged.message(data, addr))

    async def recvfrom(self) -> tuple[bytes, tuple[str, int]]:
        """Receive one datagram: (payload, (source IP, source port))."""
        return BridgedPacketConn.datagram(await self._loop.sock_recv(self._sock, RECEIVE_SIZE))

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send one datagram to the peer of a dialled socket."""
        await self._loop.sock_sendall(self._sock, self._bridged.message(data, None))

    async def receive(self) -> bytes:
        """Receive one datagram's payload (any source)."""
        payload, _ = await self.recvfrom()
        return payload

    def close(self) -> None:
        """Close the socket. Idempotent."""
        self._sock.close()
        self._bridged.close()

    async def aclose(self) -> None:
        """Close the socket. Idempotent."""
        self.close()
        await asyncio.sleep(0)

    async def __aenter__(self) -> PacketConn:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
