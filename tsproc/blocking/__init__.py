"""The node for blocking code: plain :class:`socket.socket` objects on tailnet connections.

    import tsproc.blocking

    with tsproc.blocking.Node("client", auth_key=key) as node:
        sock = node.dial("web", 80, timeout=10)
        sock.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
        print(sock.recv(65536))
        sock.close()

For HTTP, :func:`requests_adapter` lets :mod:`requests` (and :func:`pool_manager` urllib3) reach
tailnet hosts; :class:`TailnetServer` serves like :mod:`socketserver` (``http.server`` handlers
included). The node itself is tsproc's trio :class:`~tsproc.Node`, running in a thread of its
own; each connection is a real kernel socket (a duplicate of the fd the helper passed), so
reads and writes are ordinary system calls in the caller's thread. What stays true:

- A connection cut by a helper crash raises :class:`ConnectionResetError` from ``recv``; it
  never reads as a clean EOF (``recv`` returns ``b""`` only once the helper has confirmed the
  peer ended in order).
- Ctrl-C interrupts any blocking call (``dial``, ``accept``, ``recv``, ``serve_forever``) with
  :class:`KeyboardInterrupt`; the trio side of the call is cancelled, nothing is leaked, and
  leaving the ``with`` block stops the helper.
- Closing the node closes its connections, stops the helper and ends the node's thread. No
  loopback TCP port is opened for any of it.

Timeouts are ``timeout=`` arguments, as in :func:`socket.create_connection`; they raise
:class:`~tsproc.NodeTimeoutError`, a :class:`TimeoutError`.
"""

from ._node import EventIterator, LocalTailnet, Node, local_tailnet
from ._serve import TailnetServer, ThreadingTailnetServer, pool_manager, requests_adapter
from ._socket import Listener, TailnetSocket

__all__ = [
    "EventIterator",
    "Listener",
    "LocalTailnet",
    "Node",
    "TailnetServer",
    "TailnetSocket",
    "ThreadingTailnetServer",
    "local_tailnet",
    "pool_manager",
    "requests_adapter",
]
