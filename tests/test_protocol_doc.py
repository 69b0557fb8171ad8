"""docs/protocol.md §8 is the error contract: every code it lists becomes a typed exception on
the host, or knowingly a plain RemoteError, and the host types no code the spec lacks. (The
helper's side: helper/protocol_doc_test.go.)"""

from __future__ import annotations

import re
from pathlib import Path

import tsproc
from tsproc.errors import error_from_remote

PROTOCOL_MD = Path(__file__).parents[1] / "docs" / "protocol.md"

# Codes that stay a plain RemoteError: they mean a bug on one side (a request tsproc should not
# have sent) or a state the node's own checks report first, with their own exceptions.
PLAIN = {"unknown_method", "unsupported_protocol", "already_started", "not_started",
         "not_running", "internal"}


def documented_codes() -> set[str]:
    """The codes in the first column of protocol.md's "## 8. Errors" table."""
    section = PROTOCOL_MD.read_text().split("\n## 8. Errors", 1)[1].split("\n## ", 1)[0]
    codes: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            codes.update(re.findall(r"`([a-z_]+)`", line.split(" | ")[0]))
    return codes


def typed_codes() -> set[str]:
    """The code of every exception class the host raises for a helper's error answer."""
    found: set[str] = set()
    pending = list(tsproc.RemoteError.__subclasses__())
    while pending:
        cls = pending.pop()
        found.add(cls.code)
        pending.extend(cls.__subclasses__())
    return found


def test_every_documented_error_code_is_typed_or_knowingly_plain():
    documented = documented_codes()
    assert "timeout" in documented and "dial_failed" in documented  # the table was found
    typed = typed_codes()
    assert typed <= documented, f"typed codes protocol.md lacks: {typed - documented}"
    assert documented >= PLAIN, f"PLAIN codes protocol.md lacks: {PLAIN - documented}"
    assert documented == typed | PLAIN, (
        f"codes neither typed nor in PLAIN: {documented - typed - PLAIN}; "
        f"typed and PLAIN: {typed & PLAIN}")


def test_each_documented_code_keeps_its_code_on_the_host():
    for code in documented_codes():
        exc = error_from_remote(code, "message")
        assert exc.code == code
        assert (type(exc) is tsproc.RemoteError) == (code in PLAIN), code
