"""A node's life: its state machine, and the supervision of the helpers behind it.

:class:`NodeLifecycle` is the private base of :class:`~tsproc.Node`: it starts the supervisor,
starts each :class:`~tsproc._core.generation.Generation` (handshake, start, up, listeners again),
follows them into running, restarting, failed and closed through one :meth:`_set_state`, and
shuts everything down. ``node.py`` holds the public face: arguments, properties and calls.
"""

from __future__ import annotations

import contextlib
from contextlib import AsyncExitStack
from pathlib import Path

import trio

from .._child.helper import HelperProcess, find_helper
from .._child.statedir import StateDir
from ..errors import NodeClosedError, NodeNotStartedError, NodeTimeoutError, TsprocError
from .config import EXIT_NODE_BOUND, NodeConfig
from .events import EventHub
from .forward import _Endpoint
from .generation import RPC_TIMEOUT, Generation
from .streams import TailnetListener, TailnetStream
from .supervisor import Generation as SupervisedGeneration
from .supervisor import Supervisor
from .types import (
    AuthUrlEvent,
    CrashLoopEvent,
    Event,
    HelperRestartedEvent,
    IPAddress,
    NodeState,
    StateEvent,
    WhoIs,
)

__all__ = ["NodeLifecycle"]


class NodeLifecycle:
    """The state and supervision half of a Node (see the module docstring)."""

    def __init__(self, config: NodeConfig) -> None:
        self._config = config
        self.hostname = config.hostname
        self._policy = config.policy
        self._state = NodeState.NEW
        self._start_failure: BaseException | None = None  # why __aenter__ failed
        self._backend_state = ""
        self._auth_url = ""
        self._exit_node: str | None = config.exit_node  # set_exit_node changes it
        self._health: tuple[str, ...] = ()
        self._ips: tuple[IPAddress, ...] = ()
        self._generation: Generation | None = None
        self._spawned: set[Generation] = set()
        self._state_changed = trio.Event()  # set and replaced by _set_state
        self._failure: TsprocError | None = None
        self._listeners: set[TailnetListener] = set()
        self._forwards: set[_Endpoint] = set()  # forwards and SOCKS5 proxies (_forward.py)
        # Dead helpers, whose connections' peers the next one resets (reset_peers).
        self._dead: list[Generation] = []
        self._events = EventHub()
        self._stack: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None
        self._supervisor_scope = trio.CancelScope()
        self._background_scope = trio.CancelScope()
        self._supervisor: Supervisor | None = None
        self._state_dir: StateDir | None = None
        self._entered = False
        self._closing = False

    async def _open(self) -> None:
        """Start the supervisor and the first helper; wait for Running if asked to."""
        self._state = NodeState.STARTING  # no event: nobody can be waiting for this one
        path = find_helper(self._config.helper_path)
        self._state_dir = StateDir.acquire(
            self.hostname, self._config.state_dir,
            temporary=self._config.temporary_state_dir,
        )
        stack = AsyncExitStack()
        try:
            outer = await stack.enter_async_context(trio.open_nursery())
            # Background tasks live in an inner nursery with a cancel scope of their own: the
            # outer nursery's scope also covers the caller's `async with` body, which closing
            # the node must never cancel.
            self._nursery = await outer.start(self._run_background)
            self._supervisor = Supervisor(
                self._policy,
                lambda number: self._start_generation(number, path),
                self._on_running,
                name=self.hostname,
            )
            await self._nursery.start(self._supervise)
            if self._config.wait_running:
                await self._running_generation(None)
        except BaseException as exc:
            self._start_failure = exc
            with trio.CancelScope(shield=True):
                await self._shutdown()
            try:
                await stack.__aexit__(None, None, None)
            except BaseException as close_exc:
                # Cancelled mid-start: the nursery's tasks were cancelled by the same scope,
                # and their Cancelled would replace the caller's.
                if _only_cancelled(close_exc) is None:
                    raise
            # A start cancelled by the caller raises what any trio call does, a Cancelled,
            # not a group of the Cancelled of the tasks that did the starting.
            cancelled = _only_cancelled(exc)
            if cancelled is not None and cancelled is not exc:
                raise cancelled from None
            raise
        self._stack = stack

    async def _run_background(self, *, task_status: trio.TaskStatus[trio.Nursery]) -> None:
        with self._background_scope:
            async with trio.open_nursery() as nursery:
                task_status.started(nursery)
                await trio.sleep_forever()

    async def _supervise(self, *, task_status: trio.TaskStatus[None]) -> None:
        assert self._supervisor is not None
        with self._supervisor_scope:
            try:
                await self._supervisor.run(task_status=task_status)
            except TsprocError as exc:
                if self._generation is None:  # never started: __aenter__ raises it
                    raise
                # Background failure: never raise into the application's nursery; fail the node.
                self._set_state(NodeState.FAILED, failure=exc)
                self._emit(CrashLoopEvent(str(exc)))

    async def _stream_whois(self, addr: tuple[str, int]) -> WhoIs:
        """What a stream's ``whois()`` asks: :meth:`Node.whois`, which Node defines."""
        raise NotImplementedError  # pragma: no cover

    async def _start_generation(self, number: int, path: Path) -> SupervisedGeneration:
        assert self._nursery is not None and self._state_dir is not None
        process = HelperProcess.spawn(path, self._config.helper_args(),
                                      self._config.helper_environment(number), conn_record=True)
        gen = Generation(number, process, self._on_down, self._on_backend_state,
                         whois=self._stream_whois, on_request=self._config.state_answers())
        self._spawned.add(gen)
        self._nursery.start_soon(self._run_generation, gen)
        try:
            await gen.handshake(path)
            await gen.start(self._config, self._state_dir.path)
            if self._config.wait_running or number > 1:
                self._ips = await gen.up(self._config.up_timeout)
                await self._apply_exit_node(gen)
            else:
                self._nursery.start_soon(self._up_later, gen)
            await gen.relisten(self._listeners)
            for endpoint in list(self._forwards):
                await endpoint._install(gen)
            if number > 1 and self._dead:
                # The peers of the dead helper's connections may be blocked in a read that
                # nothing else would end for hours: the new helper has them reset now.
                orphaned = await self._orphaned()
                if orphaned:
                    await gen.reset_peers(orphaned)
                self._dead = []
        except BaseException as exc:
            gen.die(f"start failed: {type(exc).__name__}")
            raise
        return gen

    async def _orphaned(self) -> list[str]:
        """The four-tuples of the dead helpers' connections: those the host was handed, and
        those a helper had taken on and not handed over (read once its process is gone)."""
        tuples: dict[str, None] = {}
        for dead in self._dead:
            with trio.move_on_after(5):  # killed already: it is reaped within moments
                await dead.process.exited.wait()
            tuples.update(dict.fromkeys(dead.orphaned + dead.process.unhanded))
        return list(tuples)

    async def _apply_exit_node(self, gen: Generation) -> None:
        """Give a helper that is up the node's exit node (Node(exit_node=), set_exit_node)."""
        if self._exit_node is not None:
            await gen.request("set_exit_node", {"exit_node": self._exit_node,
                                                "timeout_ms": int(EXIT_NODE_BOUND * 1000)},
                              limit=EXIT_NODE_BOUND + 5)

    async def _run_generation(self, gen: Generation) -> None:
        try:
            await gen.run(self._policy)
        finally:
            self._spawned.discard(gen)

    async def _up_later(self, gen: Generation) -> None:
        try:
            self._ips = await gen.up(self._config.up_timeout)
            await self._apply_exit_node(gen)
        except TsprocError as exc:
            self._set_state(NodeState.FAILED, failure=exc)
            return
        # If the supervisor has not adopted this generation yet, _on_running will see is_up.
        if not gen.died.is_set() and self._generation is gen:
            self._set_state(NodeState.RUNNING)

    def _on_running(self, generation: SupervisedGeneration,
                    previous: SupervisedGeneration | None) -> None:
        assert isinstance(generation, Generation)
        self._generation = generation
        if generation.is_up:
            self._set_state(NodeState.RUNNING)
        if previous is not None:
            self._emit(HelperRestartedEvent(generation.number, previous.returncode,
                                            previous.death_reason))

    def _on_down(self, generation: Generation) -> None:
        """Called by a generation the moment it dies."""
        if not self._closing:
            self._dead.append(generation)
        if self._closing or generation is not self._generation:
            return
        if self._state is NodeState.RUNNING:
            self._set_state(NodeState.RESTARTING)

    async def _shutdown(self) -> None:
        if self._state is NodeState.CLOSED:
            return
        self._closing = True
        self._supervisor_scope.cancel()
        for listener in list(self._listeners):
            listener.close_now("the node was closed")
        for endpoint in list(self._forwards):
            endpoint._close_endpoint()
        gen = self._generation
        grace = self._policy.shutdown_grace
        if gen is not None and not gen.died.is_set():
            with trio.move_on_after(grace):
                with contextlib.suppress(TsprocError):
                    await gen.request("shutdown", {}, limit=grace)
                await gen.process.exited.wait()
            if not gen.process.exited.is_set():
                await gen.process.terminate(grace)
        # Every helper ever started (a failed start's too) is killed and reaped before the
        # background tasks that watch them go away.
        for spawned in list(self._spawned):
            spawned.die("node closed")
        with trio.move_on_after(grace):
            for spawned in list(self._spawned):
                await spawned.process.exited.wait()
        self._background_scope.cancel()
        if self._state_dir is not None:
            self._state_dir.release()
        self._set_state(NodeState.CLOSED)
        self._events.close()

    # -- state and events --

    def _set_state(self, state: NodeState, *, failure: TsprocError | None = None) -> None:
        """The one place the node's state changes: record it (and the error that failed the
        node), tell subscribers, and wake every task waiting in _running_generation."""
        if self._state is NodeState.CLOSED:
            return
        if failure is not None:
            self._failure = failure
        if state is not self._state:
            self._state = state
            self._emit(StateEvent(state, self._backend_state, self._health))
        self._state_changed.set()
        self._state_changed = trio.Event()

    def _on_backend_state(self, backend_state: str, auth_url: str,
                          health: tuple[str, ...] | None = None) -> None:
        self._backend_state = backend_state
        if health is not None:
            self._health = health
        if auth_url and auth_url != self._auth_url:
            self._auth_url = auth_url
            self._emit(AuthUrlEvent(auth_url))
        if backend_state == "Running":
            self._auth_url = ""
        self._emit(StateEvent(self._state, backend_state, self._health))

    def _emit(self, event: Event) -> None:
        self._events.emit(event)

    async def _running_generation(self, deadline: float | None) -> Generation:
        """The generation to send a request to, once the node is running. *deadline* is the
        node's own bound (NodeTimeoutError when it passes); None waits under the caller's
        cancel scope alone."""
        if not self._entered:
            raise NodeNotStartedError(
                f"node {self.hostname!r} is not started: use it inside `async with node:` "
                "(which starts it and waits until it runs)"
            )
        while True:
            if self._failure is not None:
                raise self._failure
            if self._start_failure is not None:
                failure = self._start_failure
                raise NodeClosedError(
                    f"node {self.hostname!r} did not start ({type(failure).__name__}: "
                    f"{failure}); a Node starts once: make a new one to try again"
                ) from failure
            if self._closing or self._state is NodeState.CLOSED:
                raise NodeClosedError(f"node {self.hostname!r} is closed")
            gen = self._generation
            # Invariant: RUNNING means the current generation is alive (die() resets it).
            if self._state is NodeState.RUNNING and gen is not None:
                return gen
            changed = self._state_changed
            if deadline is None:
                await changed.wait()
                continue
            with trio.move_on_at(deadline):
                await changed.wait()
                continue
            raise NodeTimeoutError(
                f"node {self.hostname!r} is not running ({self._state.value}); gave up waiting"
            )

    def _on_accept(self, listener: TailnetListener, stream: TailnetStream) -> None:
        gen = self._generation
        if gen is not None and not gen.died.is_set():
            gen.grant(listener, stream)

    def _on_listener_close(self, listener: TailnetListener, released: trio.Event | None) -> None:
        self._listeners.discard(listener)
        gen = self._generation
        if (gen is None or not gen.release_listener(listener, released)) and released is not None:
            released.set()

    async def _live_generation(self) -> Generation:
        return await self._running_generation(trio.current_time() + RPC_TIMEOUT)


def _only_cancelled(exc: BaseException) -> trio.Cancelled | None:
    """*exc* if it is a Cancelled, the first one if it is a group of nothing else, else None."""
    if isinstance(exc, trio.Cancelled):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        leaves = [_only_cancelled(e) for e in exc.exceptions]
        if leaves and all(leaf is not None for leaf in leaves):
            return leaves[0]
    return None
