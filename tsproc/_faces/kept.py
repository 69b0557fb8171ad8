"""A trio async context manager of the node (a forward, a SOCKS5 proxy …) kept entered in the
node's thread for as long as a face's ``with`` / ``async with`` lasts.

A trio context must be entered and left by one task of the node's run, so a task of its own
(:meth:`KeptContext.enter`, a call in the node's thread) enters it, hands the value back, and
waits until the face leaves (:meth:`KeptContext.leave`), or until the node's run ends, which
cancels it and so leaves the context too. The value itself (a :class:`~tsproc.Forward`, say)
is read-only data the face hands to its caller as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Generic, TypeVar, final

import trio

from .trio_thread import TrioThread

__all__ = ["KeptContext"]

T = TypeVar("T")


@final
class KeptContext(Generic[T]):
    """``make()``, an async context manager of the trio node, entered by a task of its own in
    *thread* and left when asked to."""

    def __init__(self, thread: TrioThread,
                 make: Callable[[], AbstractAsyncContextManager[T]]) -> None:
        self.thread = thread
        self._make = make
        self._leave = trio.Event()
        self._left = trio.Event()

    async def enter(self) -> T:
        """Enter the context; returns its value once entered (trio thread)."""
        nursery = self.thread._nursery
        assert nursery is not None
        value: T = await nursery.start(self._hold)
        return value

    async def _hold(self, *, task_status: trio.TaskStatus[T]) -> None:
        try:
            async with self._make() as value:
                task_status.started(value)
                await self._leave.wait()
        finally:
            self._left.set()

    async def leave(self) -> None:
        """Leave the context and wait until it is left (trio thread)."""
        self._leave.set()
        await self._left.wait()

    def leave_soon(self, _value: object = None) -> None:
        """Leave without waiting, from any thread (a caller that stopped waiting for the value,
        or for the leaving); nothing to do once the node's run is over."""
        self.thread.run_sync_soon(self._leave.set)
