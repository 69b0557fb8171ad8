"""The trio thread under the asyncio and blocking faces: every call gets exactly one outcome,
an abandoned value is disposed of, and cancellation reaches the trio side. No helper needed."""

from __future__ import annotations

import threading

import outcome
import pytest
import trio

from tsproc._faces.trio_thread import TrioThread
from tsproc.errors import NodeClosedError


@pytest.fixture
def thread():
    t = TrioThread("test trio thread")
    t.start()
    yield t
    t.stop()
    assert t.join(10)


def wait_outcome(thread: TrioThread, fn) -> outcome.Outcome:
    done = threading.Event()
    box = []
    thread.submit(fn, lambda result: (box.append(result), done.set()))
    assert done.wait(10)
    return box[0]


def test_TrioThread_runs_calls_in_its_own_thread(thread):
    async def where() -> str:
        await trio.sleep(0)
        return threading.current_thread().name

    assert wait_outcome(thread, where).unwrap() == "test trio thread"

    async def fails() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        wait_outcome(thread, fails).unwrap()


def test_Call_cancel_reaches_the_trio_side(thread):
    started, cancelled = threading.Event(), threading.Event()

    async def forever() -> None:
        try:
            started.set()
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.set()
            raise

    done = threading.Event()
    call = thread.submit(forever, lambda result: done.set())
    assert started.wait(10)
    call.cancel()
    assert cancelled.wait(10)
    assert done.wait(10)


def test_Call_abandoned_value_is_disposed(thread):
    release = threading.Event()
    disposed: list[str] = []
    delivered: list[object] = []

    async def slow_value() -> str:
        # Shielded: the value arrives although the caller gave up (a dial that completed).
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(release.wait)
        return "resource"

    call = thread.submit(slow_value, delivered.append)
    assert call.abandon(disposed.append)
    release.set()
    # Exactly one owner: the dispose function, never the caller's callback.
    for _ in range(200):
        if disposed:
            break
        trio_sleep_in_thread(0.01)
    assert disposed == ["resource"]
    assert delivered == []
    # Too late to abandon a delivered call: the caller is told so, and disposes itself.
    result = []
    call2 = thread.submit(slow_value, result.append)
    for _ in range(200):
        if result:
            break
        trio_sleep_in_thread(0.01)
    assert not call2.abandon(disposed.append)


def trio_sleep_in_thread(seconds: float) -> None:
    threading.Event().wait(seconds)


def test_TrioThread_calls_after_stop_fail_with_NodeClosedError():
    thread = TrioThread("stopping")
    thread.start()
    started = threading.Event()

    async def forever() -> None:
        started.set()
        await trio.sleep_forever()

    results: list[outcome.Outcome] = []
    thread.submit(forever, results.append)
    assert started.wait(10)
    thread.stop()
    assert thread.join(10)
    with pytest.raises(NodeClosedError):
        results[0].unwrap()

    async def anything() -> int:
        return 1

    with pytest.raises(NodeClosedError):
        wait_outcome(thread, anything).unwrap()
    assert not thread.running
