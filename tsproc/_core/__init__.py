"""The trio node: what ``tsproc`` itself exports, on the wire and child-process layers.

``node`` is the public ``Node``; ``lifecycle`` its state machine and the supervision of its
helpers (``supervisor``: the restart policy and loop, knowing nothing of the protocol);
``generation`` one helper's session, where RPC failures become the caller's exceptions;
``config`` the constructor's arguments checked once; ``streams`` and ``packet`` the connection
types; ``events`` and ``types`` what the node reports; ``serve`` ``serve_tcp``.
"""
