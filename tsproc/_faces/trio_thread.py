"""A trio run in a thread of its own, and calls into it from other threads.

tsproc's core is trio. The asyncio and blocking faces (:mod:`tsproc.aio`, :mod:`tsproc.blocking`)
do not re-implement it: each of their nodes runs a trio :class:`~tsproc.Node` in a dedicated
thread (one ``trio.run`` per node) and calls into it. This module is that thread, and knows
nothing of asyncio, of blocking sockets or of tailnets:

- :class:`TrioThread` starts the thread and its run; :meth:`TrioThread.submit` runs an async
  function there as a :class:`Call` and hands its outcome to a callback, in the trio thread.
- A :class:`Call` can be cancelled from any thread (a trio cancel scope around the function).
  A caller that stops waiting (cancelled, Ctrl-C) *abandons* it: a value that arrives after that
  goes to a dispose function instead, so a connection nobody will take is closed, not leaked.
- Whatever happens to the run, every call gets an outcome: one that never started (the run was
  already ending) fails with :class:`~tsproc.NodeClosedError`, so no caller waits forever.

Why a thread with ``trio.run`` rather than ``trio.lowlevel.start_guest_run`` on the caller's
event loop: a guest run needs a host loop, and a blocking caller has none; tsproc forks its
children from the trio thread, and a parent-death signal is tied to the thread that forked
(docs/design.md), so that thread must live as long as the node; and a busy or blocked
asyncio loop (a slow request handler, ``time.sleep`` in a coroutine) would then also stall the
heartbeat, the supervisor and every connection's bookkeeping. A thread of its own keeps the
node's promises independent of the code that uses it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar, final

import outcome
import trio

from ..errors import NodeClosedError

__all__ = ["Call", "TrioThread"]

T = TypeVar("T")

# How long start() waits for the new thread's trio run to come up (it takes microseconds).
_START_TIMEOUT = 30.0


@final
class Call(Generic[T]):
    """One async function running in a :class:`TrioThread`, and who gets its outcome."""

    def __init__(self, thread: TrioThread, fn: Callable[[], Awaitable[T]],
                 on_done: Callable[[outcome.Outcome[T]], None]) -> None:
        self._thread = thread
        self._fn = fn
        self._on_done = on_done
        # Created here, entered in the trio thread; cancelling before entry is allowed.
        self._scope = trio.CancelScope()
        self._lock = threading.Lock()
        self._finished = False
        self._dispose: Callable[[T], None] | None = None

    def cancel(self) -> None:
        """Cancel the function (from any thread); its outcome is then ``NodeClosedError`` or
        whatever it raised while being cancelled, or its value if it had just finished."""
        self._thread.run_sync_soon(self._scope.cancel)

    def abandon(self, dispose: Callable[[T], None] | None) -> bool:
        """Nobody will take the outcome: cancel, and pass a value that still arrives to
        *dispose* (called in the trio thread). Returns False if the outcome has already been
        delivered, in which case the caller must dispose of it itself."""
        with self._lock:
            if self._finished:
                return False
            self._dispose = dispose if dispose is not None else _ignore
        self.cancel()
        return True

    async def run(self) -> None:
        """The task body (trio thread)."""
        result: outcome.Outcome[T] = outcome.Error(
            NodeClosedError("the node was closed before the call finished"))
        try:
            with self._scope:
                try:
                    result = outcome.Value(await self._fn())
                except trio.Cancelled:
                    raise
                except Exception as exc:
                    result = outcome.Error(exc)
        finally:
            self.finish(result)

    def finish(self, result: outcome.Outcome[T]) -> None:
        """Deliver *result* once (any thread; later calls are ignored)."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
            dispose = self._dispose
        self._thread._forget(self)
        if dispose is None:
            self._on_done(result)
        elif isinstance(result, outcome.Value):
            dispose(result.value)


def _ignore(value: object) -> None:
    pass


@final
class TrioThread:
    """A thread that runs one ``trio.run`` until :meth:`stop`, with a nursery for calls."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._started = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._lock = threading.Lock()
        self._pending: set[Call[Any]] = set()
        self._ended = False
        self._exit_callbacks: list[Callable[[], None]] = []
        self._crash: BaseException | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<TrioThread {self.name!r} {state}, {len(self._pending)} calls>"

    @property
    def running(self) -> bool:
        return self._token is not None and not self._ended

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def start(self) -> None:
        """Start the thread; returns once its trio run accepts calls."""
        self._thread.start()
        if not self._started.wait(_START_TIMEOUT):  # pragma: no cover - a wedged machine
            raise RuntimeError(f"the trio thread {self.name!r} did not start")
        if self._crash is not None:  # pragma: no cover - trio itself failed
            raise RuntimeError(f"the trio thread {self.name!r} failed: {self._crash!r}")

    def _main(self) -> None:
        # SIGINT is for the thread the user's code runs in. The kernel hands a process-directed
        # signal to any thread that does not block it; when it picked this one, Python's handler
        # only set its flag, and a main thread asleep in asyncio's select() or a lock (no wakeup
        # fd there) was not woken: Ctrl-C did nothing until something else woke it. Blocked
        # here, it always goes to a thread that can act on it. Threads started from this one
        # inherit the mask; fork_child() unblocks it for the children.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            trio.run(self._run)
        except BaseException as exc:  # pragma: no cover - trio itself failed
            self._crash = exc
        finally:
            with self._lock:
                self._ended = True
                pending = list(self._pending)
            for call in pending:  # submitted, but the run ended before they could start
                call.finish(outcome.Error(NodeClosedError("the node was closed")))
            self._started.set()
            for callback in self._exit_callbacks:
                callback()

    async def _run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._token = trio.lowlevel.current_trio_token()
            self._started.set()
            await trio.sleep_forever()

    def on_exit(self, callback: Callable[[], None]) -> None:
        """Call *callback* in the thread right after its run ended (before the thread ends).
        Register before :meth:`start`."""
        self._exit_callbacks.append(callback)

    def run_sync_soon(self, fn: Callable[[], object]) -> bool:
        """Run *fn* in the trio thread soon (from any thread); False if the run is over.
        *fn* must not raise."""
        token = self._token
        if token is None or self._ended:
            return False
        try:
            token.run_sync_soon(fn)
        except trio.RunFinishedError:
            return False
        return True

    def submit(self, fn: Callable[[], Awaitable[T]],
               on_done: Callable[[outcome.Outcome[T]], None]) -> Call[T]:
        """Run *fn* in the trio thread; *on_done* gets its outcome there, exactly once
        (NodeClosedError if the run ends first)."""
        call = Call(self, fn, on_done)
        with self._lock:
            ended = self._ended
            if not ended:
                self._pending.add(call)
        if ended or not self.run_sync_soon(lambda: self._spawn(call)):
            call.finish(outcome.Error(NodeClosedError("the node is closed")))
        return call

    def _spawn(self, call: Call[Any]) -> None:
        nursery = self._nursery
        try:
            assert nursery is not None
            nursery.start_soon(call.run)
        except RuntimeError:  # the nursery is closing: the run is ending
            call.finish(outcome.Error(NodeClosedError("the node is closed")))

    def _forget(self, call: Call[Any]) -> None:
        with self._lock:
            self._pending.discard(call)

    def stop(self) -> None:
        """End the run (from any thread): running calls are cancelled. Idempotent."""
        nursery = self._nursery
        if nursery is not None:
            self.run_sync_soon(nursery.cancel_scope.cancel)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; True if it has."""
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()
