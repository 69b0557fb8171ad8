"""Exceptions across the httpcore seam: one mapping function, and httpcore's errors as httpx's.

Private to :mod:`tsproc.httpx`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Final

import httpcore
import httpx

from ..errors import NodeTimeoutError, TsprocError

__all__ = ["HTTPX_ERRORS", "NO_UNIX_SOCKETS", "OS_READ_ERRORS", "OS_TLS_ERRORS", "OS_WRITE_ERRORS",
           "ExceptionMap", "dial_errors", "map_exceptions"]

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


def dial_errors(*timeouts: type[Exception]) -> ExceptionMap:
    """A tailnet dial's failures as httpcore's: a node timeout or one of the face's own
    *timeouts* is a connect timeout, any other tsproc error a connect error."""
    kinds: tuple[type[Exception], ...] = (NodeTimeoutError, *timeouts)
    mapping = dict.fromkeys(kinds, httpcore.ConnectTimeout)
    return {**mapping, TsprocError: httpcore.ConnectError}


# What the asyncio and blocking faces' streams raise (both OSError-based) as httpcore's errors.
OS_READ_ERRORS: Final[ExceptionMap] = {
    TimeoutError: httpcore.ReadTimeout,
    OSError: httpcore.ReadError,  # ConnectionResetError: a cut connection, never a clean end
}
OS_WRITE_ERRORS: Final[ExceptionMap] = {
    TimeoutError: httpcore.WriteTimeout,
    OSError: httpcore.WriteError,
}
OS_TLS_ERRORS: Final[ExceptionMap] = {
    TimeoutError: httpcore.ConnectTimeout,
    OSError: httpcore.ConnectError,  # ssl.SSLError is an OSError
}

# Why every face's backend refuses httpcore's connect_unix_socket.
NO_UNIX_SOCKETS: Final = "a tailnet transport does not connect to unix sockets"


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
