"""The shared record of connections a helper took on and had not handed over yet.

The host knows the four-tuple of every connection it was handed, and after a helper dies the
next one makes their peers reset them (``reset_peers``, docs/protocol.md §4). A connection
the helper's netstack completed but had not handed over — in tsnet's accept queue while the
application held the backlog, or between tsnet's Accept and the ``accepted`` notification —
is known only to the helper, which may die with no time to say so (SIGKILL, the OOM killer).
So the host creates a small shared file, passes it to the helper (an inherited fd), and the
helper writes each such tuple into it as its netstack takes the connection on and clears it at
the hand-over: a few memory stores, no message and no wake-up on a connection's set-up. The
host reads it once the helper has exited. The layout is helper/internal/connrecord's.
"""

from __future__ import annotations

import ipaddress
import mmap
import os
import struct
import sys
import tempfile
import zlib
from typing import Final

__all__ = ["ConnRecord"]

MAGIC: Final = b"TSPCONN1"
_HEADER: Final = 16
_SLOT: Final = 48
# Connections taken on and not handed over at one moment: tsnet's queues, which hold each for
# a second at most, and the hand-overs under way. A tuple that outlives its slot is only lost
# after this many newer connections.
SLOTS: Final = 4096


class ConnRecord:
    """A record file, mapped: :attr:`fd` for the helper, :meth:`open_tuples` after it died."""

    def __init__(self, slots: int = SLOTS) -> None:
        size = _HEADER + slots * _SLOT
        if sys.platform == "linux":
            self.fd = os.memfd_create("tsproc-conn-record", os.MFD_CLOEXEC)
        else:  # pragma: no cover - no memfd: an unlinked file serves the same
            self.fd, path = tempfile.mkstemp(prefix="tsproc-conn-record-")
            os.unlink(path)
        try:
            os.ftruncate(self.fd, size)
            self._map: mmap.mmap | None = mmap.mmap(self.fd, size)
        except BaseException:
            os.close(self.fd)
            raise
        self._map[:_HEADER] = MAGIC + struct.pack("<II", slots, 0)

    def open_tuples(self) -> list[str]:
        """The "LOCAL REMOTE" tuples the helper had taken on and not handed over, as
        ``reset_peers`` wants them. Read once its process has exited."""
        if self._map is None:
            return []
        data = bytes(self._map)
        tuples = []
        for off in range(_HEADER, len(data) - _SLOT + 1, _SLOT):
            slot = data[off:off + _SLOT]
            if slot[0] != 1 or struct.unpack_from("<I", slot, 40)[0] != zlib.crc32(slot[:40]):
                continue  # free, or being written when the helper died (its SYN unanswered)
            lport, rport = struct.unpack_from("<HH", slot, 2)
            if slot[1] == 4:
                local = f"{ipaddress.IPv4Address(slot[8:12])}:{lport}"
                remote = f"{ipaddress.IPv4Address(slot[24:28])}:{rport}"
            else:
                local = f"[{ipaddress.IPv6Address(slot[8:24])}]:{lport}"
                remote = f"[{ipaddress.IPv6Address(slot[24:40])}]:{rport}"
            tuples.append(f"{local} {remote}")
        return tuples

    def close(self) -> None:
        """Unmap and close it. Idempotent."""
        if self._map is not None:
            self._map.close()
            self._map = None
            os.close(self.fd)
