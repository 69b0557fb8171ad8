"""Small generic helpers that tsproc's layers share and that belong to none of them."""

from __future__ import annotations

from abc import ABCMeta
from typing import Any, TypeGuard, TypeVar

__all__ = ["NoPublicConstructor", "is_int"]

_T = TypeVar("_T")


def is_int(value: object) -> TypeGuard[int]:
    """An int, and not a bool (which Python counts as one): the only integer check tsproc uses
    for protocol fields and arguments alike."""
    return isinstance(value, int) and not isinstance(value, bool)


class NoPublicConstructor(ABCMeta):
    """Metaclass of the types only tsproc makes (trio's pattern): ``Type(...)`` raises
    TypeError; tsproc calls ``Type._create(...)``. Their constructors take internals (fds,
    the helper's ids) that an application has no business passing."""

    def __call__(cls, *args: object, **kwargs: object) -> None:
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__} has no public constructor: a Node makes them"
        )

    def _create(cls: type[_T], *args: Any, **kwargs: Any) -> _T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc, no-any-return]
