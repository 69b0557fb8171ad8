"""The README's code blocks marked runnable run as a newcomer would run them: copied into a
file, with ``python file.py``, and print what the marker says.

A block is runnable when the line before its opening fence is
``<!-- runnable; prints: TEXT -->`` (or ``<!-- runnable -->``): the block must exit 0 and, with
``prints:``, its output must contain TEXT.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli import cli_env

README = Path(__file__).parents[1] / "README.md"

_BLOCK = re.compile(r"^<!-- runnable(?:; prints: (?P<prints>.*?))? -->\n```python\n"
                    r"(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)


def runnable_blocks() -> list[tuple[str, str | None]]:
    return [(m["code"], m["prints"]) for m in _BLOCK.finditer(README.read_text())]


def test_the_first_example_is_runnable():
    # A newcomer's first copy-paste: the first Python block of the README is marked runnable.
    text = README.read_text()
    first = text.index("```python")
    assert text[:first].rstrip().endswith("-->") and "<!-- runnable" in text[:first]
    assert len(runnable_blocks()) >= 3  # trio, asyncio, blocking


@pytest.mark.parametrize("index", range(len(runnable_blocks())))
def test_readme_block_runs_as_copied(index, tmp_path):
    code, prints = runnable_blocks()[index]
    script = tmp_path / "example.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            env=cli_env(), cwd=tmp_path, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    if prints is not None:
        assert prints in result.stdout, (result.stdout, result.stderr)
