"""Smoke-test an installed tsproc wheel, or one helper binary.

    python smoke_test.py                      # the installed package: version, hello, demo
    python smoke_test.py --no-demo            # the same without the demo
    python smoke_test.py --helper PATH --emulator qemu-aarch64-static --no-demo

Three checks, each printed:

1. ``tsproc-helper version`` runs and names itself.
2. The protocol handshake (docs/protocol.md §3): the helper is started with one end of an AF_UNIX
   socketpair as stdin/stdout, exactly as tsproc does; we send the ``hello`` request as one frame
   (4-byte big-endian length + msgpack ``[0, 1, "hello", {"protocol": 1}]``) and expect
   ``[1, 1, None, {"protocol": 1, ...}]``. Closing our end must make the helper exit.
3. ``tsproc demo`` (the installed console script), run from a temporary directory so that no
   source checkout can shadow the installed package; its response/whois/transfer lines must
   appear.

It needs only the standard library and msgpack (a tsproc dependency), so cibuildwheel's
``test-command`` can run it against each wheel.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import msgpack

PROTOCOL = 1
HELLO_ID = 1
MAX_FRAME = 1 << 20
DEMO_LINES = ("response: ", "whois: ", "transfer: ")


class SmokeTestError(Exception):
    """A check failed; the message says which and what was seen."""


def installed_helper() -> Path:
    """The helper inside the installed tsproc package (located without importing tsproc)."""
    spec = importlib.util.find_spec("tsproc")
    if spec is None or not spec.submodule_search_locations:
        raise SmokeTestError("tsproc is not installed in this Python")
    package = Path(next(iter(spec.submodule_search_locations)))
    print(f"tsproc package: {package}")
    return package / "_bin" / "tsproc-helper"


def check_version(command: list[str]) -> str:
    """Run ``tsproc-helper version``; returns its output line."""
    result = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=120,
                            check=False)
    line = result.stdout.strip()
    if result.returncode != 0 or not line.startswith("tsproc-helper "):
        raise SmokeTestError(
            f"`tsproc-helper version` exited {result.returncode}: {line!r} {result.stderr!r}"
        )
    print(f"version: {line}")
    return line


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise SmokeTestError(f"the helper closed the channel after {len(data)} of {size} bytes")
        data += chunk
    return data


def check_handshake(command: list[str], timeout: float = 120.0) -> dict[str, object]:
    """Start the helper on a socketpair, say hello, return its result map."""
    host_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with tempfile.TemporaryFile() as stderr, host_end:
        try:
            process = subprocess.Popen([*command, "node"], stdin=child_end.fileno(),
                                       stdout=child_end.fileno(), stderr=stderr, close_fds=True)
        finally:
            child_end.close()
        try:
            host_end.settimeout(timeout)
            body = msgpack.packb([0, HELLO_ID, "hello", {"protocol": PROTOCOL}])
            host_end.sendall(struct.pack(">I", len(body)) + body)
            (length,) = struct.unpack(">I", _receive_exactly(host_end, 4))
            if not 1 <= length <= MAX_FRAME:
                raise SmokeTestError(f"the helper sent a frame of {length} bytes")
            reply = msgpack.unpackb(_receive_exactly(host_end, length), raw=False)
        except (OSError, ValueError, SmokeTestError) as exc:
            process.kill()
            process.wait()
            stderr.seek(0)
            raise SmokeTestError(
                f"handshake failed: {exc}; helper stderr: {stderr.read()[-2000:]!r}"
            ) from None
        ok = (
            isinstance(reply, list) and len(reply) == 4 and reply[:3] == [1, HELLO_ID, None]
            and isinstance(reply[3], dict) and reply[3].get("protocol") == PROTOCOL
        )
        if not ok:
            process.kill()
            process.wait()
            raise SmokeTestError(f"unexpected hello response: {reply!r}")
        host_end.close()  # end of stream: the helper must exit by itself
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise SmokeTestError("the helper did not exit after its channel closed") from None
    result: dict[str, object] = reply[3]
    print(f"handshake: {reply!r} (helper exited {code} at end of stream)")
    return result


def check_demo(timeout: float) -> None:
    """Run the installed ``tsproc demo`` outside any source tree and check its output."""
    script = Path(sys.executable).parent / "tsproc"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "tsproc"]
    with tempfile.TemporaryDirectory(prefix="tsproc-demo-") as cwd:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TSPROC_HELPER")}
        result = subprocess.run([*command, "demo"], cwd=cwd, env=env, capture_output=True,
                                text=True, timeout=timeout, check=False)
    sys.stdout.write(result.stdout)
    lines = result.stdout.splitlines()
    missing = [prefix for prefix in DEMO_LINES if not any(ln.startswith(prefix) for ln in lines)]
    if result.returncode != 0 or missing:
        raise SmokeTestError(
            f"`tsproc demo` exited {result.returncode}, missing lines {missing}; "
            f"stderr: {result.stderr[-3000:]}"
        )
    print(f"demo: ok ({shlex.join(command)} demo)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--helper", type=Path, help="a helper binary (default: the installed one)")
    parser.add_argument("--emulator", default="",
                        help="run the helper through this command, e.g. qemu-aarch64-static")
    parser.add_argument("--no-demo", action="store_true", help="skip `tsproc demo`")
    parser.add_argument("--demo-timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    try:
        helper = args.helper or installed_helper()
        if not os.access(helper, os.X_OK):
            raise SmokeTestError(f"{helper} is missing or not executable")
        command = [*shlex.split(args.emulator), str(helper)]
        check_version(command)
        check_handshake(command)
        if not args.no_demo:
            check_demo(args.demo_timeout)
    except (SmokeTestError, subprocess.TimeoutExpired) as exc:
        print(f"smoke test FAILED: {exc}", file=sys.stderr)
        return 1
    print("smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
