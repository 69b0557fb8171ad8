"""The node's event fan-out: every subscriber gets its own bounded queue of events."""

from __future__ import annotations

from typing import Final, final

import trio

from .._util import NoPublicConstructor
from .types import Event

__all__ = ["EventHub", "EventStream"]

_EVENT_BUFFER: Final = 256


@final
class EventStream(metaclass=NoPublicConstructor):
    """An async iterator of a node's events; ends when the node closes.

    Use ``async with node.events() as events: async for event in events: …`` or just
    ``async for``. If the consumer falls 256 events behind, further events are dropped (the
    newest, not the queued ones: what it reads stays in order, without gaps in the middle) and
    :attr:`dropped` counts them; the node's present state is always ``node.state``.
    """

    def __init__(self, receive: trio.MemoryReceiveChannel[Event]) -> None:
        self._receive = receive
        self.dropped = 0

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._receive.aclose()


class EventHub:
    """The node's subscribers; :meth:`emit` never blocks."""

    def __init__(self) -> None:
        self._subscribers: list[tuple[trio.MemorySendChannel[Event], EventStream]] = []
        self._closed = False

    def emit(self, event: Event) -> None:
        for send, stream in list(self._subscribers):
            try:
                send.send_nowait(event)
            except trio.WouldBlock:
                stream.dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove((send, stream))

    def subscribe(self) -> EventStream:
        send, receive = trio.open_memory_channel[Event](_EVENT_BUFFER)
        stream = EventStream._create(receive)
        if self._closed:
            send.close()
        else:
            self._subscribers.append((send, stream))
        return stream

    def close(self) -> None:
        """End every subscriber's iteration (the node closed)."""
        self._closed = True
        for send, _ in self._subscribers:
            send.close()
        self._subscribers.clear()
