"""The pytest plugin, used exactly as the README shows: its test file, copied verbatim from the
README, runs in a fresh pytest process that finds the plugin through its entry point."""

from __future__ import annotations

import os
import re
import sys
from importlib.metadata import entry_points
from pathlib import Path

import trio

README = Path(__file__).parents[1] / "README.md"


def readme_test_file() -> str:
    """The README's python block that starts with `# test_echo.py`."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    (block,) = [b for b in blocks if b.startswith("# test_echo.py\n")]
    return block


async def test_the_readme_plugin_example_passes_as_written(tmp_path):
    (tmp_path / "test_echo.py").write_text(readme_test_file())
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    with trio.fail_after(120):
        result = await trio.run_process(
            # -p no:cacheprovider: leave nothing behind; no other option a user would not pass.
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_echo.py"],
            cwd=tmp_path, env=env, capture_stdout=True, capture_stderr=True, check=False,
        )
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    assert re.search(r"\b1 passed\b", output), output


async def test_without_pytest_trio_the_fixtures_say_install_pytest_trio(tmp_path):
    (tmp_path / "test_echo.py").write_text(readme_test_file())
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    with trio.fail_after(120):
        result = await trio.run_process(
            # -p no:trio: as if pytest-trio were not installed.
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:trio",
             "test_echo.py"],
            cwd=tmp_path, env=env, capture_stdout=True, capture_stderr=True, check=False,
        )
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode != 0, output
    assert "pip install pytest-trio" in output, output
    assert "requested an async fixture" not in output, output


def test_the_plugin_is_registered_as_a_pytest11_entry_point():
    (plugin,) = [e for e in entry_points(group="pytest11") if e.name == "tsproc"]
    assert plugin.value == "tsproc.pytest_plugin"
