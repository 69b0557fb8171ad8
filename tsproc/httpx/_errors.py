"""Exceptions across the httpcore seam: one mapping function, and httpcore's errors as httpx's.

Private to :mod:`tsproc.httpx`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Final

import httpcore
import httpx

__all__ = ["HTTPX_ERRORS", "ExceptionMap", "map_exceptions"]

ExceptionMap = Mapping[type[BaseException], type[Exception]]


@contextlib.contextmanager
def map_exceptions(mapping: ExceptionMap) -> Iterator[None]:
    """Raise the mapped type of an exception that is an instance of a key (the first match)."""
    try:
        yield
    except Exception as exc:
        for from_exc, to_exc in mapping.items():
            if isinstance(exc, from_exc):
                raise to_exc(str(exc)) from exc
        raise


# httpcore's exceptions → httpx's, most specific first (what httpx's own transport does).
HTTPX_ERRORS: Final[ExceptionMap] = {
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.ProxyError: httpx.ProxyError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
    httpcore.ProtocolError: httpx.ProtocolError,
}
