"""What the asyncio and blocking faces share (docs/design.md section 13).

``trio_thread`` runs one trio run per node in a thread of its own and takes calls into it from
any thread; ``bridge`` keeps the trio node entered and hands its connections to the other world
as a duplicate of their fd, checking an EOF with the trio stream; ``shared`` holds the node's
read-only facts and the local tailnet wrapper both faces expose. Nothing here imports asyncio
streams or blocking sockets: those live in ``tsproc.aio`` and ``tsproc.blocking``.
"""
