"""A tailnet run by Headscale, the open-source control server people deploy, on 127.0.0.1 only.

    async with tsproc.testing.headscale_tailnet() as tailnet:
        async with tailnet.node("a") as a, tailnet.node("b") as b:
            ...
        print(await tailnet.list_nodes())

Headscale is not bundled. Install the version tsproc is tested against
(``go install github.com/juanfont/headscale/cmd/headscale@v0.29.2``), then put it on PATH, set
``$TSPROC_HEADSCALE``, or pass ``headscale_path``. In a tsproc checkout, ``make headscale`` builds
it into ``.cache/bin/``.

What the generated configuration does, and why:

- Every listener is on 127.0.0.1, each on a free port: the control server (HTTP, which also serves
  the embedded DERP relay), metrics, and the embedded STUN server (UDP). Remote gRPC stays off (it
  needs TLS or ``grpc_allow_insecure``, and neither is set); the CLI uses a unix socket.
- Nothing leaves the machine: no DERP map URLs (only the embedded region), no update check, no log
  upload, no ACME, no OIDC, no upstream DNS servers.
- The sqlite database, the noise and DERP keys and the socket live in a temporary directory that is
  removed on exit. ``HEADSCALE_*`` variables are not passed on, so the environment cannot point the
  server or its CLI elsewhere.

Headscale's log goes to the ``tsproc.headscale`` logger, keys redacted. On Linux the server dies
with the process that started it, even one killed outright.

The embedded DERP relay speaks plain HTTP, which Tailscale clients use only with
``TS_DEBUG_USE_DERP_HTTP=1``: :meth:`HeadscaleTailnet.node` gives its nodes that knob through
``Node(helper_env=...)``, so nothing else in the process is affected.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import trio

from .._child.process import ChildProcess, fork_child
from .._core.node import Node
from .._util import is_int
from ..errors import InvalidArgumentError, TsprocError, redact

__all__ = ["HEADSCALE_VERSION", "HeadscaleError", "HeadscaleNode", "HeadscaleTailnet",
           "find_headscale", "headscale_tailnet"]

log = logging.getLogger("tsproc.headscale")

#: The Headscale release tsproc's interoperability tests run against.
HEADSCALE_VERSION: Final = "v0.29.2"

_READY_TIMEOUT: Final = 30.0
_CLI_TIMEOUT: Final = 30.0
_STOP_GRACE: Final = 5.0
_START_ATTEMPTS: Final = 3  # a free port can be taken by someone else before Headscale binds it
_KEY_LIFETIME: Final = 24 * 3600.0
_DERP_HTTP: Final = "TS_DEBUG_USE_DERP_HTTP"
_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,62}$")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})+$")
_LEVELS: Final = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}


class HeadscaleError(TsprocError):
    """Headscale is missing, did not start, or one of its commands failed.

    The message says which, with Headscale's last log lines (auth keys redacted).
    """


@dataclass(frozen=True, slots=True)
class HeadscaleNode:
    """A node as ``headscale nodes list`` reports it.

    Attributes:
        id: Headscale's node id; it stays the same for as long as the node keeps its identity.
        name: the hostname the node registered with.
        given_name: its MagicDNS name on the tailnet (``given_name.<base_domain>``).
        user: the name of the user that owns it ("" for a tagged node).
        ip_addresses: its tailnet addresses.
        online: whether it is connected to Headscale now.
        ephemeral: whether it joined with an ephemeral key (Headscale deletes it when it logs
            out or has been offline for a while).
        info: everything Headscale reported about it.
    """

    id: int
    name: str
    given_name: str
    user: str
    ip_addresses: tuple[str, ...]
    online: bool
    ephemeral: bool
    info: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> HeadscaleNode:
        return cls(
            id=int(raw["id"]),
            name=str(raw.get("name", "")),
            given_name=str(raw.get("given_name", "")),
            user=str((raw.get("user") or {}).get("name", "")),
            ip_addresses=tuple(str(ip) for ip in raw.get("ip_addresses") or ()),
            online=bool(raw.get("online", False)),
            ephemeral=bool((raw.get("pre_auth_key") or {}).get("ephemeral", False)),
            info=raw,
        )


@dataclass
class HeadscaleTailnet:
    """A running Headscale tailnet, with one user and two reusable keys of that user.

    Attributes:
        control_url: give it to :class:`~tsproc.Node` as ``control_url``.
        auth_key: a reusable pre-auth key for nodes that stay on the tailnet.
        ephemeral_auth_key: a reusable pre-auth key for ephemeral nodes. In Headscale the key,
            not the node, decides whether a node is ephemeral.
        user: the Headscale user that owns the keys (WhoIs reports it as the login name).
        user_id: that user's Headscale id.
        magic_dns_suffix: the tailnet's DNS suffix (``base_domain``).
        config_path: the generated Headscale configuration.
    """

    control_url: str
    auth_key: str = field(repr=False)
    ephemeral_auth_key: str = field(repr=False)
    user: str
    user_id: int
    magic_dns_suffix: str
    config_path: Path
    _binary: Path = field(repr=False)
    _env: dict[str, str] = field(repr=False)

    def node(self, hostname: str, **kwargs: Any) -> Node:
        """A :class:`~tsproc.Node` on this tailnet, ephemeral unless ``ephemeral=False`` is given,
        with :attr:`ephemeral_auth_key` or :attr:`auth_key` to match unless ``auth_key`` is
        given. Use it with ``async with``."""
        kwargs.setdefault("control_url", self.control_url)
        ephemeral = kwargs.setdefault("ephemeral", True)
        kwargs.setdefault("auth_key", self.ephemeral_auth_key if ephemeral else self.auth_key)
        kwargs["helper_env"] = {_DERP_HTTP: "1", **kwargs.get("helper_env", {})}
        return Node(hostname, **kwargs)

    async def create_auth_key(
        self, *, reusable: bool = False, ephemeral: bool = False, expiration: float = 3600.0
    ) -> str:
        """A new pre-auth key of :attr:`user`.

        Args:
            reusable: the key can register more than one node.
            ephemeral: nodes that join with it are ephemeral.
            expiration: seconds until the key expires (nodes that joined stay).

        Raises:
            HeadscaleError: Headscale refused.
        """
        if not (is_int(expiration) or isinstance(expiration, float)) \
                or not 0 < expiration < math.inf:
            raise InvalidArgumentError(
                f"expiration must be a positive number of seconds, got {expiration!r}")
        args = ["preauthkeys", "create", "--user", str(self.user_id),
                "--expiration", f"{math.ceil(expiration)}s"]
        if reusable:
            args.append("--reusable")
        if ephemeral:
            args.append("--ephemeral")
        result = await self.cli(*args)
        key = result.get("key") if isinstance(result, dict) else None
        if not isinstance(key, str) or not key:
            raise HeadscaleError("`headscale preauthkeys create` printed no key")
        return key

    async def list_nodes(self) -> list[HeadscaleNode]:
        """Every node Headscale knows, as ``headscale nodes list`` reports them."""
        result = await self.cli("nodes", "list")
        return [HeadscaleNode.from_json(raw) for raw in result or ()]

    async def cli(self, *args: str) -> Any:
        """Run ``headscale <args> --output json`` against this server; its decoded output.

        An escape hatch for what this class does not wrap (``"users", "list"``, say). Never
        put a key in *args*: other local users can read a process's arguments.

        Raises:
            HeadscaleError: the command failed, timed out, or printed something that is not JSON.
        """
        cmd = [os.fspath(self._binary), "--config", str(self.config_path), *args,
               "--output", "json"]
        return await _run_cli(cmd, self._env)


def find_headscale(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The Headscale binary: *explicit*, else ``$TSPROC_HEADSCALE``, else ``headscale`` on PATH.

    Raises:
        HeadscaleError: none found, or it is not an executable file.
    """
    if explicit is not None:
        path, origin = Path(explicit), "the headscale_path argument"
    elif os.environ.get("TSPROC_HEADSCALE"):
        path, origin = Path(os.environ["TSPROC_HEADSCALE"]), "$TSPROC_HEADSCALE"
    elif found := shutil.which("headscale"):
        path, origin = Path(found), "PATH"
    else:
        raise HeadscaleError(
            "no headscale binary: pass headscale_path, set TSPROC_HEADSCALE, or put headscale on "
            f"PATH. Install Headscale {HEADSCALE_VERSION} with `go install "
            f"github.com/juanfont/headscale/cmd/headscale@{HEADSCALE_VERSION}` (in a tsproc "
            "checkout: `make headscale`)."
        )
    if not path.is_file() or not os.access(path, os.X_OK):
        raise HeadscaleError(f"headscale binary {path} (from {origin}) is not an executable file")
    return path


@asynccontextmanager
async def headscale_tailnet(
    *,
    user: str = "tsproc",
    base_domain: str = "headscale.test",
    headscale_path: str | os.PathLike[str] | None = None,
) -> AsyncIterator[HeadscaleTailnet]:
    """Run Headscale on 127.0.0.1 for the duration of the ``async with`` block.

    It starts with an empty database, creates *user* and two reusable keys of that user (see
    :class:`HeadscaleTailnet`), and on exit stops Headscale and deletes its files.

    Args:
        user: the Headscale user to create (letters, digits, ``.``, ``_``, ``@``, ``+``, ``-``).
        base_domain: the MagicDNS suffix of the tailnet.
        headscale_path: the binary (default: see :func:`find_headscale`).

    Raises:
        HeadscaleError: no binary, or Headscale did not start or set up within 30 s.
    """
    if not isinstance(user, str) or not _USER_NAME.match(user):
        raise InvalidArgumentError(f"invalid Headscale user name {user!r}")
    if not isinstance(base_domain, str) or not _DNS_NAME.match(base_domain):
        raise InvalidArgumentError(
            "base_domain must be a lower-case DNS name with at least two labels, "
            f"got {base_domain!r}")
    binary = find_headscale(headscale_path)
    # Its configuration comes from our file alone: viper would let HEADSCALE_* override it (and
    # HEADSCALE_CLI_ADDRESS would send the CLI to another server).
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADSCALE_")}
    with tempfile.TemporaryDirectory(prefix="tsproc-headscale-") as tmp:
        server = await _start(binary, Path(tmp), base_domain, env)
        try:
            yield await _set_up(server, user, base_domain, binary, env)
        finally:
            with trio.CancelScope(shield=True):
                await server.stop()


# -- the server process --


class _Server:
    """One ``headscale serve`` process (a :class:`~tsproc._child.process.ChildProcess`) and the
    tail of its log.

    Headscale does not notice that its parent died, so on Linux it is started through util-linux's
    ``setpriv --pdeathsig TERM``: a test run that is killed outright leaves no server behind. The
    death signal fires when the parent *thread* ends, which is why ChildProcess forks from the
    trio thread.
    """

    def __init__(self, argv: list[str], env: dict[str, str], config: Path, port: int) -> None:
        try:
            popen, log_fd = fork_child(_with_parent_death_signal(argv), env,
                                       stdin=subprocess.DEVNULL, stdout=None)
        except OSError as exc:
            raise HeadscaleError(f"cannot start Headscale ({argv[0]}): {exc}") from exc
        self.process = ChildProcess(popen, log_fd, logger=log, label="headscale",
                                    parse_line=_parse_line)
        self.config, self.port = config, port
        # A system task, not a nursery: a nursery around the caller's `async with` body would
        # wrap every exception from it in an ExceptionGroup. watch() never raises.
        trio.lowlevel.spawn_system_task(self.process.watch, name="headscale")

    @property
    def tail(self) -> Sequence[str]:
        return self.process.log_tail

    def describe_tail(self) -> str:
        if not self.tail:
            return ""
        return "\nlast Headscale log lines:\n  " + "\n  ".join(self.tail)

    async def wait_healthy(self) -> bool:
        """True once ``/health`` passes; False if Headscale exits first."""
        while self.process.returncode is None:
            with trio.move_on_after(2):
                if await _health_passes(self.port):
                    return True
            await trio.sleep(0.05)
        return False

    async def stop(self) -> None:
        """SIGTERM (Headscale shuts down cleanly), SIGKILL if it takes too long; then reap."""
        await self.process.terminate(_STOP_GRACE)


def _parse_line(text: str) -> tuple[int, str]:
    """Headscale's JSON log lines (stdout and stderr), kept whole."""
    text = text.strip()
    try:
        return _LEVELS.get(str(json.loads(text).get("level")), logging.INFO), text
    except (ValueError, AttributeError):
        return logging.WARNING, text


def _with_parent_death_signal(argv: list[str]) -> list[str]:
    if sys.platform == "linux" and (setpriv := shutil.which("setpriv")):
        return [setpriv, "--pdeathsig", "TERM", "--", *argv]
    return argv  # elsewhere there is no such signal: a killed host leaves Headscale running


async def _start(binary: Path, tmp: Path, base_domain: str, env: dict[str, str]) -> _Server:
    for attempt in range(1, _START_ATTEMPTS + 1):
        http, metrics, grpc, stun = _free_ports()
        config = tmp / "config.json"
        config.write_text(json.dumps(_config(tmp, base_domain, http=http, metrics=metrics,
                                             grpc=grpc, stun=stun), indent=2))
        server = _Server([os.fspath(binary), "--config", str(config), "serve"], env, config, http)
        try:
            with trio.move_on_after(_READY_TIMEOUT):
                if await server.wait_healthy():
                    return server
        except BaseException:
            with trio.CancelScope(shield=True):
                await server.stop()
            raise
        await server.stop()
        if attempt < _START_ATTEMPTS and any("address already in use" in line
                                             for line in server.tail):
            continue
        raise HeadscaleError(
            f"Headscale ({binary}) did not become healthy within {_READY_TIMEOUT:g} s "
            f"({server.process.describe_exit()}){server.describe_tail()}"
        )
    raise AssertionError("unreachable")


def _free_ports() -> tuple[int, int, int, int]:
    """Three free TCP ports and a free UDP port on 127.0.0.1, all different."""
    kinds = (socket.SOCK_STREAM, socket.SOCK_STREAM, socket.SOCK_STREAM, socket.SOCK_DGRAM)
    socks = [socket.socket(socket.AF_INET, kind) for kind in kinds]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        http, metrics, grpc, stun = (s.getsockname()[1] for s in socks)
        return http, metrics, grpc, stun
    finally:
        for s in socks:
            s.close()


def _config(tmp: Path, base_domain: str, *, http: int, metrics: int, grpc: int,
            stun: int) -> dict[str, Any]:
    """Headscale's configuration (JSON, which viper reads like the usual YAML)."""
    return {
        "server_url": f"http://127.0.0.1:{http}",
        "listen_addr": f"127.0.0.1:{http}",
        "metrics_listen_addr": f"127.0.0.1:{metrics}",
        # Not opened: remote gRPC needs TLS or grpc_allow_insecure. The CLI uses unix_socket.
        "grpc_listen_addr": f"127.0.0.1:{grpc}",
        "grpc_allow_insecure": False,
        "unix_socket": str(tmp / "headscale.sock"),
        "unix_socket_permission": "0700",
        "noise": {"private_key_path": str(tmp / "noise_private.key")},
        "prefixes": {"v4": "100.64.0.0/10", "v6": "fd7a:115c:a1e0::/48",
                     "allocation": "sequential"},
        "derp": {
            "server": {
                "enabled": True,
                "region_id": 999,
                "region_code": "headscale",
                "region_name": "tsproc Headscale embedded DERP",
                "verify_clients": True,
                "stun_listen_addr": f"127.0.0.1:{stun}",
                "private_key_path": str(tmp / "derp_server_private.key"),
                "automatically_add_embedded_derp_region": True,
                "ipv4": "127.0.0.1",
            },
            "urls": [],
            "paths": [],
            "auto_update_enabled": False,
        },
        "disable_check_updates": True,
        "database": {"type": "sqlite",
                     "sqlite": {"path": str(tmp / "db.sqlite"), "write_ahead_log": True}},
        "tls_letsencrypt_hostname": "",
        "tls_cert_path": "",
        "tls_key_path": "",
        "log": {"level": "info", "format": "json"},
        "policy": {"mode": "file", "path": ""},
        "dns": {
            "magic_dns": True,
            "base_domain": base_domain,
            "override_local_dns": False,
            "nameservers": {"global": [], "split": {}},
            "search_domains": [],
            "extra_records": [],
        },
        "logtail": {"enabled": False},
    }


async def _health_passes(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return False
    async with stream:
        try:
            await stream.send_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            response = b""
            while chunk := await stream.receive_some(4096):
                response += chunk
        except trio.BrokenResourceError:
            return False
    status_line = response.split(b"\r\n", 1)[0].split()
    return len(status_line) >= 2 and status_line[1] == b"200"


async def _set_up(server: _Server, user: str, base_domain: str, binary: Path,
                  env: dict[str, str]) -> HeadscaleTailnet:
    tailnet = HeadscaleTailnet(
        control_url=f"http://127.0.0.1:{server.port}",
        auth_key="",
        ephemeral_auth_key="",
        user=user,
        user_id=0,
        magic_dns_suffix=base_domain,
        config_path=server.config,
        _binary=binary,
        _env=env,
    )
    try:
        with trio.fail_after(_READY_TIMEOUT):
            created = await tailnet.cli("users", "create", user)
            tailnet.user_id = int(created["id"])
            tailnet.auth_key = await tailnet.create_auth_key(
                reusable=True, expiration=_KEY_LIFETIME)
            tailnet.ephemeral_auth_key = await tailnet.create_auth_key(
                reusable=True, ephemeral=True, expiration=_KEY_LIFETIME)
    except trio.TooSlowError:
        raise HeadscaleError(f"setting up Headscale took over {_READY_TIMEOUT:g} s"
                             f"{server.describe_tail()}") from None
    except HeadscaleError as exc:
        raise HeadscaleError(f"{exc}{server.describe_tail()}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise HeadscaleError(f"unexpected answer from `headscale users create`: {exc!r}") from None
    log.info("Headscale tailnet at %s (user %r, id %d)", tailnet.control_url, user,
             tailnet.user_id)
    return tailnet


async def _run_cli(cmd: list[str], env: dict[str, str]) -> Any:
    what = " ".join(["headscale", *cmd[3:-2]])
    try:
        with trio.fail_after(_CLI_TIMEOUT):
            done = await trio.run_process(cmd, stdin=b"", capture_stdout=True,
                                          capture_stderr=True, check=False, env=env)
    except trio.TooSlowError:
        raise HeadscaleError(f"`{what}` did not finish within {_CLI_TIMEOUT:g} s") from None
    except OSError as exc:
        raise HeadscaleError(f"cannot run `{what}`: {exc}") from None
    out = done.stdout.decode("utf-8", "replace")
    if done.returncode != 0:
        said = (out.strip() + "\n" + done.stderr.decode("utf-8", "replace").strip()).strip()
        raise HeadscaleError(redact(f"`{what}` failed (exit status {done.returncode}): {said}"))
    try:
        return json.loads(out) if out.strip() else None
    except ValueError:
        raise HeadscaleError(redact(f"`{what}` printed something that is not JSON: {out[:500]!r}")
                             ) from None
