"""A trio context of the node held for an ``async with`` of asyncio code (:meth:`Node.forward`,
:meth:`Node.socks5`). Private to :mod:`tsproc.aio`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar, final

from .._faces.bridge import NodeRuntime
from .._faces.kept import KeptContext
from ..errors import NodeClosedError
from ._streams import call_in

__all__ = ["AsyncKept"]

T = TypeVar("T")


@final
class AsyncKept(Generic[T]):
    """``async with`` gives the trio context's value; leaving leaves it in the node's thread
    (cancelling the wait does not stop the leaving)."""

    def __init__(self, runtime: NodeRuntime,
                 make: Callable[[], AbstractAsyncContextManager[T]]) -> None:
        self._runtime = runtime
        self._kept = KeptContext(runtime.thread, make)

    async def __aenter__(self) -> T:
        return await call_in(self._runtime, self._kept.enter, dispose=self._kept.leave_soon)

    async def __aexit__(self, *exc: Any) -> None:
        leaving = asyncio.ensure_future(call_in(self._runtime, self._kept.leave))
        try:
            await asyncio.shield(leaving)
        except asyncio.CancelledError:
            self._kept.leave_soon()
            raise
        except NodeClosedError:
            pass  # the node closed first, which left the context
