"""Keeping a helper alive: restart policy, backoff and crash-loop detection.

The supervisor knows nothing of the protocol or of tsnet. It asks a *starter* for a running
generation (a helper that has said hello, started and come up), waits for that generation to
die, and starts the next one after a backoff — until the node closes or the helper keeps dying.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from ..errors import HelperCrashLoop, HelperDiedError, NodeTimeoutError, ProtocolError

# The node's life: a WARNING for every helper restart, an ERROR when it gives up (README,
# "Logging"). The helper's own lines are on "tsproc.helper".
log = logging.getLogger("tsproc")

__all__ = ["RestartPolicy", "Supervisor"]

# Errors that say "this helper failed", as opposed to "your configuration is wrong": only these
# are worth another attempt.
RETRYABLE = (HelperDiedError, ProtocolError)


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How a :class:`~tsproc.Node` watches and restarts its helper.

    Attributes:
        max_attempts: consecutive failures (a helper that dies before it is running, or within
            ``stable_after`` seconds of it) before the node gives up with HelperCrashLoop.
        initial_backoff: seconds before the first restart; doubles (``multiplier``) per failure
            up to ``max_backoff``, each delay spread by ±``jitter`` (a fraction).
        stable_after: a helper that ran this long resets the failure count.
        heartbeat_interval: seconds between pings to the helper.
        heartbeat_timeout: a ping unanswered this long means the helper hangs: it is killed.
        shutdown_grace: seconds a closing helper gets to log out and exit before SIGTERM, and
            again before SIGKILL.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.25
    max_backoff: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.2
    stable_after: float = 30.0
    heartbeat_interval: float = 2.0
    heartbeat_timeout: float = 10.0
    shutdown_grace: float = 5.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RestartPolicy.max_attempts must be at least 1")
        for name in ("initial_backoff", "max_backoff", "heartbeat_interval",
                     "heartbeat_timeout", "shutdown_grace"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"RestartPolicy.{name} must be a positive number, got {value!r}")
        if not 0 <= self.jitter < 1:
            raise ValueError("RestartPolicy.jitter must be in [0, 1)")

    def backoff(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the attempt after *failures* consecutive failures (≥ 1)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** max(0, failures - 1))
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return base * (1 + spread)


class Generation(Protocol):
    """What the supervisor needs of one running helper."""

    died: trio.Event

    @property
    def death_reason(self) -> str: ...

    @property
    def returncode(self) -> int | None: ...

    @property
    def stderr_tail(self) -> Sequence[str]: ...

    @property
    def pid(self) -> int: ...


Starter = Callable[[int], Awaitable[Generation]]


class Supervisor:
    """Runs generations one after another under a :class:`RestartPolicy`.

    Args:
        policy: the restart policy.
        start: called with the generation number (1, 2 …); returns once that helper is
            running, or raises. RETRYABLE errors count as a failure; any other is final.
        on_running: called with each generation once it runs (after a restart: with the
            previous generation, so events can say how it ended).

    A generation tells its owner of its own death (it knows first); the supervisor only
    waits for it and starts the next one.
    """

    def __init__(
        self,
        policy: RestartPolicy,
        start: Starter,
        on_running: Callable[[Generation, Generation | None], None],
        *,
        name: str = "",
    ) -> None:
        self.policy = policy
        self._name = name  # the node's hostname, for the log
        self._start = start
        self._on_running = on_running
        self.restarts = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the first generation (errors propagate to ``nursery.start``), then keep one
        running. Returns only by raising: HelperCrashLoop or a final error from *start*."""
        failures = 0
        number = 0
        previous: Generation | None = None
        last_error: BaseException | None = None
        started = False
        while True:
            if failures:
                if failures >= self.policy.max_attempts:
                    crash_loop = self._crash_loop(failures, previous, last_error)
                    if started:  # before, __aenter__ raises it to the caller
                        log.error("node %r: %s; the node has failed", self._name, crash_loop)
                    raise crash_loop
                delay = self.policy.backoff(failures)
                if started:
                    log.warning("node %r: restarting its helper in %.2f s (%s)", self._name,
                                delay, self._why(previous, last_error))
                await trio.sleep(delay)
            number += 1
            began = trio.current_time()
            try:
                generation = await self._start(number)
            except RETRYABLE as exc:
                failures += 1
                last_error = exc
                continue
            except NodeTimeoutError as exc:
                if not started:
                    raise
                # After a restart the control server may be briefly away: try again.
                failures += 1
                last_error = exc
                continue
            if started:
                self.restarts += 1
                log.warning("node %r: helper restarted: pid %d, restart %d, same identity",
                            self._name, generation.pid, self.restarts)
            self._on_running(generation, previous)
            if not started:
                started = True
                task_status.started()
            await generation.died.wait()
            previous = generation
            last_error = None
            if trio.current_time() - began >= self.policy.stable_after:
                failures = 0
            failures += 1

    @staticmethod
    def _why(previous: Generation | None, last_error: BaseException | None) -> str:
        if last_error is not None:
            return "the last attempt failed: " + str(last_error).split("\n", 1)[0]
        if previous is not None:
            return f"helper pid {previous.pid} {previous.death_reason}"
        return "unknown"

    def _crash_loop(
        self, failures: int, previous: Generation | None, last_error: BaseException | None
    ) -> HelperCrashLoop:
        tail: Sequence[str] = ()
        returncode = None
        if isinstance(last_error, HelperDiedError):
            tail = last_error.stderr_tail
            returncode = last_error.returncode
        elif previous is not None:
            tail = previous.stderr_tail
            returncode = previous.returncode
        reason = str(last_error).split("\n", 1)[0] if last_error else (
            previous.death_reason if previous else "unknown")
        return HelperCrashLoop(
            f"the helper failed {failures} times in a row; giving up (last: {reason})",
            returncode=returncode,
            stderr_tail=tail,
        )
