"""A trio context of the node held for a ``with`` of blocking code (:meth:`Node.forward`,
:meth:`Node.socks5`). Private to :mod:`tsproc.blocking`."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any, Generic, TypeVar, final

from .._faces.bridge import within
from .._faces.kept import KeptContext
from .._faces.trio_thread import TrioThread
from ..errors import NodeClosedError
from ._socket import call

__all__ = ["Kept"]

T = TypeVar("T")


@final
class Kept(Generic[T]):
    """``with`` gives the trio context's value (within *timeout*); leaving leaves it in the
    node's thread. Ctrl-C while entering leaves it too."""

    def __init__(self, thread: TrioThread, make: Callable[[], AbstractAsyncContextManager[T]],
                 timeout: float | None, what: str) -> None:
        self._kept = KeptContext(thread, make)
        self._timeout = timeout
        self._what = what

    def __enter__(self) -> T:
        kept = self._kept
        return call(kept.thread, partial(within, self._timeout, self._what, kept.enter),
                    dispose=kept.leave_soon)

    def __exit__(self, *exc: Any) -> None:
        try:
            call(self._kept.thread, self._kept.leave)
        except NodeClosedError:
            pass  # the node closed first, which left the context
        except BaseException:
            self._kept.leave_soon()
            raise
