"""The package's layout: its import graph has no cycle, and its public import paths and names
stay what they were before the layers got folders of their own."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tsproc"


def _module_files() -> dict[str, Path]:
    """Every module of tsproc by dotted name (a package by its ``__init__``)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        if "_bin" in path.parts:
            continue
        parts = ("tsproc", *path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The tsproc modules that ``name`` imports anywhere in its file: at the top, inside
    functions, and under ``if TYPE_CHECKING:`` too. A cycle through type-only imports still
    means that neither module can be read without the other, which is what the layers forbid."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                # `from . import protocol` names a module; `from . import Node` a package's name.
                submodule = f"{target}.{alias.name}"
                found.add(submodule if submodule in modules else target)
    return {m for m in found if m in modules and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (its modules in order, the first repeated last), or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(module: str) -> list[str] | None:
        path.append(module)
        on_path.add(module)
        for target in sorted(graph[module]):
            if target in on_path:
                return [*path[path.index(target):], target]
            if target not in done and (found := visit(target)):
                return found
        on_path.discard(path.pop())
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done and (found := visit(module)):
            return found
    return None


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_relative_imports_resolve() -> None:
    modules = _module_files()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert "tsproc._wire.protocol" in graph["tsproc._wire.rpc"]  # from . import protocol
    assert "tsproc._core.streams" in graph["tsproc._core.generation"]  # from .streams import
    assert "tsproc" in graph["tsproc._faces.bridge"]  # from .. import Node
    assert "tsproc.errors" in graph["tsproc._wire.protocol"]  # from ..errors import


def test_tsproc_import_graph_has_no_cycle() -> None:
    modules = _module_files()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


# Every public import path and the names it exported before the layers got folders
# (its __all__; pytest_plugin, which has none, by the names it defines).
PUBLIC = {
    "tsproc": [
        "AddressInUseError", "AuthError", "AuthUrlEvent", "CrashLoopEvent", "DialError", "Event",
        "EventStream", "FunnelUnavailableError", "HelperCrashLoop", "HelperDiedError",
        "HelperError", "HelperNotFoundError", "HelperRestartedEvent", "HelperVersionError",
        "InvalidArgumentError", "LimitError", "NeedsLoginError", "Node", "NodeClosedError",
        "NodeInfo", "NodeNotStartedError", "NodeState", "NodeTimeoutError", "NotFoundError",
        "PeerStatus", "PingResult", "ProtocolError", "RemoteError", "RestartPolicy",
        "StateDirLocked", "StateEvent", "Status", "TailnetListener", "TailnetPacketConn",
        "TailnetStream", "TlsUnavailableError", "TsprocError", "UserInfo", "WhoIs",
        "__version__", "serve_tcp",
    ],
    "tsproc.errors": [
        "AddressInUseError", "AuthError", "DialError", "FunnelUnavailableError",
        "HelperCrashLoop", "HelperDiedError", "HelperError", "HelperNotFoundError",
        "HelperVersionError", "InvalidArgumentError", "LimitError", "NeedsLoginError",
        "NodeClosedError", "NodeNotStartedError", "NodeTimeoutError", "NotFoundError",
        "ProtocolError", "RemoteError", "StateDirLocked", "TlsUnavailableError", "TsprocError",
        "redact",
    ],
    "tsproc.aio": [
        "ClientConnectedCallback", "EventStream", "LocalTailnet", "Node", "TailnetServer",
        "TailnetStreamWriter", "local_tailnet", "serve", "serve_asgi",
    ],
    "tsproc.blocking": [
        "EventIterator", "Listener", "LocalTailnet", "Node", "TailnetServer", "TailnetSocket",
        "ThreadingTailnetServer", "local_tailnet", "pool_manager", "requests_adapter",
    ],
    "tsproc.testing": [
        "HeadscaleError", "HeadscaleNode", "HeadscaleTailnet", "LocalTailnet",
        "headscale_tailnet", "local_tailnet",
    ],
    "tsproc.httpx": ["TailnetNetworkBackend", "TailnetTransport"],
    "tsproc.asgi": [
        "ASGIApp", "Config", "HYPERCORN_VERSION", "IDENTITY_HEADER_PREFIXES", "WHOIS_EXTENSION",
        "scope_whois", "serve",
    ],
    "tsproc.websocket": [
        "Peer", "TailnetWebSocketServer", "connect_websocket", "open_websocket",
        "serve_websocket",
    ],
    "tsproc.pytest_plugin": ["pytest_configure", "pytest_fixture_setup", "tailnet", "tailnet_node"],
    "tsproc.__main__": ["main"],
}
# pytest_plugin has no __all__: these are the names it had to define.
WITHOUT_ALL = {"tsproc.pytest_plugin"}


@pytest.mark.parametrize("path", sorted(PUBLIC))
def test_public_import_path_exports_its_names(path: str) -> None:
    module = importlib.import_module(path)
    if path in WITHOUT_ALL:
        assert not hasattr(module, "__all__")
    else:
        assert sorted(module.__all__) == PUBLIC[path]
    missing = [name for name in PUBLIC[path] if not hasattr(module, name)]
    assert not missing


def test_public_import_paths_load_no_test_tooling() -> None:
    # A fresh interpreter: the faces import tsproc.testing's local tailnet, which must not
    # execute the Headscale runner (it loads when one of its names is asked for).
    code = (
        "import sys, tsproc, tsproc.aio, tsproc.blocking, tsproc.testing\n"
        "assert 'tsproc.testing._headscale' not in sys.modules, 'headscale loaded'\n"
        "assert 'pytest' not in sys.modules, 'pytest loaded'\n"
        "tsproc.testing.HeadscaleTailnet\n"
        "assert 'tsproc.testing._headscale' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_pytest_plugin_entry_point_names_the_public_module() -> None:
    from importlib.metadata import entry_points  # noqa: PLC0415

    (plugin,) = [e for e in entry_points(group="pytest11") if e.name == "tsproc"]
    assert plugin.value == "tsproc.pytest_plugin"
