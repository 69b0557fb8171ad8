"""Small generic helpers that tsproc's layers share and that belong to none of them."""

from __future__ import annotations

from abc import ABCMeta
from typing import Any, TypeGuard, TypeVar

__all__ = ["FACES", "NoPublicConstructor", "face_of", "is_int", "require_face"]

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


# A node's face: which world its calls belong to, and the class that world uses. Each Node
# class says which it is in a ``_tsproc_face`` class attribute, so that an integration can
# check and name the right class without importing the faces.
FACES: dict[str, str] = {
    "trio": "tsproc.Node",
    "asyncio": "tsproc.aio.Node",
    "blocking": "tsproc.blocking.Node",
}


def face_of(node: object) -> str | None:
    """'trio', 'asyncio' or 'blocking' for a tsproc node; None for anything else."""
    face = getattr(type(node), "_tsproc_face", None)
    return face if face in FACES else None


def require_face(node: object, api: str, accepts: tuple[str, ...],
                 instead: dict[str, str] | None = None) -> str:
    """Check, at once, that *node* is of a face (``"trio"``, ``"asyncio"``, ``"blocking"``)
    that *api* *accepts*; return its face. *instead* names, per other face, what its user
    should call: a node of the wrong face would otherwise fail only on its first request,
    with an error from the wrong event loop.

    Raises:
        TypeError: naming the node class *api* needs, and what to use instead.
    """
    face = face_of(node)
    if face in accepts:
        assert face is not None
        return face
    wanted = " or ".join(FACES[f] for f in accepts)
    got = FACES[face] if face is not None else f"{type(node).__module__}.{type(node).__qualname__}"
    hint = (instead or {}).get(face or "")
    raise TypeError(f"{api} needs a {wanted}, got a {got}" + (f"; use {hint}" if hint else ""))
