"""``Node.capture_pcap``: tsnet's packet capture, written into a file the application names.

The helper hands over the read end of a pipe that carries a pcap stream (docs/protocol.md §4,
``capture_pcap``); this module copies it into the file until the capture is stopped
(``stop_capture``) and the helper closes the pipe, so the file ends on a whole record. The file
is created 0600: it holds the plaintext of the node's tailnet traffic.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final, Literal

import trio

from ..errors import InvalidArgumentError, ProtocolError, TsprocError
from .generation import int_field

if TYPE_CHECKING:
    from .generation import Generation

__all__ = ["CaptureFormat", "capture_to_file"]

CaptureFormat = Literal["ip", "tailscale"]
# How long closing a capture waits for the helper's last records.
_DRAIN_BOUND: Final = 5.0


@asynccontextmanager
async def capture_to_file(live_generation: Callable[[], Awaitable[Generation]],
                          path: str | os.PathLike[str],
                          fmt: CaptureFormat) -> AsyncIterator[None]:
    """Capture the packets of the node into *path* while the block runs."""
    if fmt not in ("ip", "tailscale"):
        raise InvalidArgumentError(f"format must be 'ip' or 'tailscale', got {fmt!r}")
    try:
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise InvalidArgumentError(f"cannot write the capture to {os.fspath(path)!r}: {exc}") \
            from exc
    try:
        gen = await live_generation()
        reply = await gen.request("capture_pcap", {"format": fmt})
        if reply.fd is None:
            raise ProtocolError("a capture_pcap answer must carry the pipe's fd")
        pipe = trio.lowlevel.FdStream(reply.fd)
        reply.fd = None
        async with pipe, trio.open_nursery() as nursery:
            capture_id = int_field(reply.result, "capture")
            drained = trio.Event()
            nursery.start_soon(_copy, pipe, out, drained)
            try:
                yield
            finally:
                with trio.CancelScope(shield=True):
                    # A helper that died has closed its end of the pipe anyway.
                    with contextlib.suppress(TsprocError):
                        await gen.request("stop_capture", {"capture": capture_id},
                                          limit=_DRAIN_BOUND)
                    with trio.move_on_after(_DRAIN_BOUND):
                        await drained.wait()
                    nursery.cancel_scope.cancel()
    finally:
        os.close(out)


async def _copy(pipe: trio.lowlevel.FdStream, out: int, drained: trio.Event) -> None:
    try:
        while data := await pipe.receive_some(1 << 16):
            view = memoryview(data)
            while view:
                view = view[os.write(out, view):]
    finally:
        drained.set()
