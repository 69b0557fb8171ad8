"""Where a node keeps its identity: :class:`StateStore`, and the answers to the helper's calls.

``Node(state=...)`` takes a directory (the default), ``"memory"`` (ephemeral nodes only), or an
object with ``read(key)`` and ``write(key, value)``. With such an object tsnet's state — the
node's private keys, its profile and prefs — never touches the helper's disk: each read and write
becomes a ``state_read`` / ``state_write`` request from the helper, which :class:`StoreAnswers`
answers by calling the store (docs/protocol.md §4b).

Values are secrets. Nothing here logs or formats one; errors name the key and the exception's
type and (redacted) text.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Final, Literal, Protocol, runtime_checkable

import trio

from ..errors import InvalidArgumentError, RemoteError, StateStoreError, redact

__all__ = ["STORE_CALL_BOUND", "StateStore", "StoreAnswers", "check_state"]

log = logging.getLogger("tsproc.node")

# How long one read or write of an async store may take. The helper gives up a little later
# (statestore's timeout), so the host's clearer message arrives first.
STORE_CALL_BOUND: Final = 10.0


@runtime_checkable
class StateStore(Protocol):
    """A node's state kept by the application: ``Node(state=store)``.

    tsnet reads and writes a handful of keys (``_machinekey``, ``_profiles``, ``profile-…``);
    the values are opaque bytes that include the node's private keys: keep them as secret as
    an auth key. Either method may be a plain function or a coroutine function. A plain one
    runs in the node's trio thread and must be quick (a local file, SQLite); anything that
    waits on a network should be ``async``. Each call is bounded (10 s); a store that raises
    or hangs fails the node's start with :class:`~tsproc.StateStoreError`.

    Calls come one at a time, in the order tsnet makes them.
    """

    def read(self, key: str) -> bytes | Awaitable[bytes | None] | None:
        """The value stored under *key*, or None if there is none."""
        ...

    def write(self, key: str, value: bytes) -> Awaitable[None] | None:
        """Store *value* under *key*, replacing any earlier value, durably before returning."""
        ...


StateKind = Literal["dir", "memory", "store"]


def check_state(state: object, state_dir: object) -> tuple[StateKind, Any]:
    """What ``state=`` (and the older ``state_dir=``) ask for: ``("dir", path or None)``,
    ``("memory", None)`` or ``("store", store)``.

    Raises:
        InvalidArgumentError: both given, or *state* is none of the three.
    """
    if state is None:
        return "dir", state_dir
    if state_dir is not None:
        raise InvalidArgumentError("give state= or state_dir=, not both (state_dir=d is state=d)")
    if state == "memory":
        return "memory", None
    if isinstance(state, str | os.PathLike):
        return "dir", Path(state)
    if isinstance(state, StateStore):
        for name in ("read", "write"):
            if not callable(getattr(state, name)):
                break
        else:
            return "store", state
    raise InvalidArgumentError(
        f"state must be a directory, 'memory' or an object with read(key) and "
        f"write(key, value) methods (tsproc.StateStore), got {type(state).__name__}"
    )


class StoreAnswers:
    """Answers the helper's ``state_read`` and ``state_write`` requests from a store."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._name = type(store).__name__

    async def __call__(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        key = params.get("key")
        if not isinstance(key, str):
            raise RemoteError(f"{method}: key must be a string", code="bad_request")
        if method == "state_read":
            value = await self._call("read", key)
            if isinstance(value, bytearray | memoryview):
                value = bytes(value)
            if value is not None and not isinstance(value, bytes):
                raise self._failed("read", key, f"returned {type(value).__name__}, "
                                   "want bytes or None")
            return {"value": value}
        if method == "state_write":
            value = params.get("value")
            if not isinstance(value, bytes):
                raise RemoteError("state_write: value must be bytes", code="bad_request")
            await self._call("write", key, value)
            return {}
        raise RemoteError(f"the host answers no {method!r} request", code="unknown_method")

    async def _call(self, name: str, key: str, *args: bytes) -> Any:
        try:
            result = getattr(self._store, name)(key, *args)
            if inspect.isawaitable(result):
                with trio.fail_after(STORE_CALL_BOUND):
                    result = await result
        except trio.TooSlowError:
            raise self._failed(name, key, f"did not answer within {STORE_CALL_BOUND:g} s") from None
        except Exception as exc:
            raise self._failed(name, key, f"raised {type(exc).__name__}: {exc}") from None
        return result

    def _failed(self, name: str, key: str, what: str) -> StateStoreError:
        message = redact(f"{self._name}.{name}({key!r}) {what}")
        log.warning("state store: %s", message)
        return StateStoreError(message)
