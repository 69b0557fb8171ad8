"""The README's logging table names every logger tsproc logs on, and no other."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_the_readme_logger_table_names_every_logger():
    used = {name for path in (ROOT / "tsproc").rglob("*.py")
            for name in re.findall(r'getLogger\("([\w.]+)"\)', path.read_text())}
    readme = ROOT / "README.md"
    section = readme.read_text().split("**Logging.**", 1)[1].split("\n\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([\w.]+)` \|", section, flags=re.M))
    assert "tsproc" in used and "tsproc.helper" in used  # the scan found them
    assert documented == used
