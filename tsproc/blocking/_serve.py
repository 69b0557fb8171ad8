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
from .._util import require_face
from ..errors import NodeTimeoutError, TsprocError
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
        require_face(node, "tsproc.blocking.TailnetServer", ("blocking",),
                     {"trio": "tsproc.serve_tcp", "asyncio": "tsproc.aio.serve"})
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
    """A :class:`urllib3.PoolManager` whose connections go through *node*: the URL's host is a
    tailnet name or IP. Keyword arguments go to the PoolManager.

    ``https://`` runs TLS over the tailnet connection and verifies the server's certificate as
    urllib3 always does (``ca_certs``/``ssl_context``; for a local tailnet, its ``ca_cert``), so
    a :meth:`Node.listen_tls` service is reached by its MagicDNS name
    (``https://web.tailnet.ts.net/``). A failed dial raises urllib3's ``NewConnectionError``
    (``ConnectTimeoutError`` for a timeout), as a failed TCP connect does, so retries and
    ``requests`` work as usual.
    """
    require_face(node, "tsproc.blocking.pool_manager", ("blocking",),
                 {"trio": "tsproc.httpx.TailnetTransport",
                  "asyncio": "tsproc.httpx.TailnetTransport or tsproc.aiohttp.TailnetConnector"})
    # urllib3 and requests are the caller's, not tsproc's, dependencies.
    import urllib3  # noqa: PLC0415
    from urllib3.connection import HTTPConnection, HTTPSConnection  # noqa: PLC0415
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool  # noqa: PLC0415
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError  # noqa: PLC0415

    def dial(conn: HTTPConnection, default_port: int) -> socket.socket:
        timeout = _timeout(conn.timeout)
        try:
            sock = node.dial(conn._dns_host, conn.port or default_port, timeout=timeout)
        except NodeTimeoutError as exc:
            raise ConnectTimeoutError(
                conn, f"tailnet connection to {conn.host} timed out: {exc}") from exc
        except TsprocError as exc:
            raise NewConnectionError(
                conn, f"Failed to establish a tailnet connection: {exc}") from exc
        sock.settimeout(timeout)
        return sock

    class TailnetHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return dial(self, 80)

    class TailnetHTTPSConnection(HTTPSConnection):
        # urllib3 wraps what this returns with SSLContext.wrap_socket, which a TailnetSocket
        # supports (the TLS socket carries the connection's bookkeeping on).
        def _new_conn(self) -> socket.socket:
            return dial(self, 443)

    class TailnetHTTPConnectionPool(HTTPConnectionPool):
        ConnectionCls = TailnetHTTPConnection

    class TailnetHTTPSConnectionPool(HTTPSConnectionPool):
        ConnectionCls = TailnetHTTPSConnection

    manager = urllib3.PoolManager(**kwargs)
    manager.pool_classes_by_scheme = {"http": TailnetHTTPConnectionPool,
                                      "https": TailnetHTTPSConnectionPool}
    return manager


def _timeout(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None  # urllib3's "default" sentinel, or no timeout
    return float(value)


def requests_adapter(node: Node, **kwargs: Any) -> Any:
    """A :mod:`requests` transport adapter that sends requests through *node*::

        session = requests.Session()
        session.mount("http://", tsproc.blocking.requests_adapter(node))
        session.mount("https://", tsproc.blocking.requests_adapter(node))
        session.get("http://web/").text
        session.get("https://web.tailnet.ts.net/", verify=ca_file).text   # a listen_tls node

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
