""":mod:`socketserver` servers on tailnet ports, and :mod:`requests`/urllib3 over the tailnet.

Private to :mod:`tsproc.blocking`, which re-exports the public names.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._core.config import DEFAULT_BACKLOG
from ..errors import InvalidArgumentError, NodeTimeoutError, TsprocError
from ._socket import TailnetSocket

if TYPE_CHECKING:
    from ._node import Node


class TailnetServer(socketserver.BaseServer):
    """A :mod:`socketserver` server on a tailnet port: give it any ``BaseRequestHandler``
    (``StreamRequestHandler``, ``http.server.BaseHTTPRequestHandler`` …)::

        with tsproc.blocking.TailnetServer(node, 80, Handler) as server:
            server.serve_forever()

    ``self.request`` is a :class:`TailnetSocket`, ``self.client_address`` the caller's tailnet
    (ip, port) and ``self.server.node`` the node (for ``node.whois(self.client_address)``).
    Requests are handled one at a time; :class:`ThreadingTailnetServer` handles each in a thread.
    """

    def __init__(self, node: Node, port: int,
                 RequestHandlerClass: Callable[[Any, Any, TailnetServer],
                                               socketserver.BaseRequestHandler],
                 *, backlog: int = DEFAULT_BACKLOG) -> None:
        self.node = node
        self.listener = node.listen(port, backlog=backlog)
        super().__init__((node.hostname, port), RequestHandlerClass)

    def fileno(self) -> int:
        return self.listener.fileno()

    def get_request(self) -> tuple[TailnetSocket, tuple[str, int]]:
        # serve_forever calls this when fileno() is readable; a spurious wake-up raises
        # TimeoutError (an OSError), which socketserver ignores.
        return self.listener.accept(timeout=0)

    def server_close(self) -> None:
        self.listener.close()

    def shutdown_request(self, request: Any) -> None:
        with contextlib.suppress(OSError):
            request.shutdown(socket.SHUT_WR)  # the handler is done: the peer reads EOF
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        request.close()


class ThreadingTailnetServer(socketserver.ThreadingMixIn, TailnetServer):
    """:class:`TailnetServer` that handles each connection in a thread of its own (joined
    when the server closes)."""


# -- requests and urllib3 --

def pool_manager(node: Node, **kwargs: Any) -> Any:
    """A :class:`urllib3.PoolManager` whose ``http://`` connections go through *node*: the URL's
    host is a tailnet name or IP. Keyword arguments go to the PoolManager.

    A failed dial raises urllib3's ``NewConnectionError`` (``ConnectTimeoutError`` for a
    timeout), as a failed TCP connect does, so retries and ``requests`` work as usual.
    ``https://`` is refused: the tailnet already encrypts and authenticates every byte.
    """
    # urllib3 and requests are the caller's, not tsproc's, dependencies.
    import urllib3  # noqa: PLC0415
    from urllib3.connection import HTTPConnection  # noqa: PLC0415
    from urllib3.connectionpool import HTTPConnectionPool  # noqa: PLC0415
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError  # noqa: PLC0415

    class TailnetHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            timeout = _timeout(self.timeout)
            try:
                sock = node.dial(self._dns_host, self.port or 80, timeout=timeout)
            except NodeTimeoutError as exc:
                raise ConnectTimeoutError(
                    self, f"tailnet connection to {self.host} timed out: {exc}") from exc
            except TsprocError as exc:
                raise NewConnectionError(
                    self, f"Failed to establish a tailnet connection: {exc}") from exc
            sock.settimeout(timeout)
            return sock

    class TailnetHTTPConnectionPool(HTTPConnectionPool):
        ConnectionCls = TailnetHTTPConnection

    class RefusedHTTPSPool(HTTPConnectionPool):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise InvalidArgumentError(
                "tsproc's urllib3/requests adapter serves http:// URLs: the tailnet encrypts "
                "and authenticates the connection already")

    manager = urllib3.PoolManager(**kwargs)
    manager.pool_classes_by_scheme = {"http": TailnetHTTPConnectionPool,
                                      "https": RefusedHTTPSPool}
    return manager


def _timeout(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None  # urllib3's "default" sentinel, or no timeout
    return float(value)


def requests_adapter(node: Node, **kwargs: Any) -> Any:
    """A :mod:`requests` transport adapter that sends ``http://`` requests through *node*::

        session = requests.Session()
        session.mount("http://", tsproc.blocking.requests_adapter(node))
        session.get("http://web/").text

    Keyword arguments go to ``requests.adapters.HTTPAdapter`` (``max_retries``,
    ``pool_maxsize`` …). Needs ``pip install requests``.
    """
    from requests.adapters import HTTPAdapter  # noqa: PLC0415 - the caller's dependency

    class TailnetAdapter(HTTPAdapter):
        def init_poolmanager(self, connections: int, maxsize: int, block: bool = False,
                             **pool_kwargs: Any) -> None:
            self.poolmanager = pool_manager(node, num_pools=connections, maxsize=maxsize,
                                            block=block, **pool_kwargs)

    return TailnetAdapter(**kwargs)
