"""tsproc._identity.whois_peer: the one WhoIs rule of tsproc.asgi, tsproc.aio.serve_asgi and
tsproc.websocket (the servers' end-to-end tests cover the answered case)."""

from __future__ import annotations

import logging

import trio

import tsproc
from tsproc._identity import WHOIS_TIMEOUT, whois_peer


class _Peerless:
    """Stands in for a node whose WhoIs never answers, or fails."""

    def __init__(self, error: Exception | None) -> None:
        self._error = error

    async def whois(self, addr: object) -> tsproc.WhoIs:
        if self._error is not None:
            raise self._error
        await trio.sleep_forever()
        raise AssertionError("unreachable")


async def test_whois_peer_gives_up_after_WHOIS_TIMEOUT_and_says_why(autojump_clock, caplog):
    log = logging.getLogger("tsproc.test")
    start = trio.current_time()
    assert await whois_peer(_Peerless(None), ("100.64.0.7", 4242), log) is None  # type: ignore[arg-type]
    assert trio.current_time() - start == WHOIS_TIMEOUT
    assert "closing connection from ('100.64.0.7', 4242): WhoIs failed: no answer within 10 s" \
        in caplog.text


async def test_whois_peer_logs_a_failed_WhoIs_only_where_asked(caplog):
    error = tsproc.NotFoundError("no such peer")
    caplog.set_level(logging.DEBUG)
    assert await whois_peer(_Peerless(error), ("100.64.0.7", 1), None) is None  # type: ignore[arg-type]
    assert not caplog.records
    log = logging.getLogger("tsproc.test")
    assert await whois_peer(_Peerless(error), ("100.64.0.7", 1), log) is None  # type: ignore[arg-type]
    assert "WhoIs failed: no such peer" in caplog.text
