"""The wire: the helper protocol and the channel that carries it, knowing nothing of tsnet.

``protocol`` is the protocol without I/O (msgpack frames, the fd FIFO that pairs passed fds with
the messages that name them, size caps checked before allocation), testable byte by byte;
``rpc`` runs it over one socket under trio (``RpcChannel``: requests with result handlers,
notifications, fds passed with SCM_RIGHTS). docs/protocol.md is the spec both follow.
"""
