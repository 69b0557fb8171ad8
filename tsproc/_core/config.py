"""What a :class:`~tsproc.Node` is asked to be, checked once: :class:`NodeConfig`.

The node's constructor arguments become a frozen :class:`NodeConfig`, which refuses bad values
with :class:`~tsproc.InvalidArgumentError` and builds what every helper of the node is started
with: its argv, its environment and the ``start`` request's params. The checks of per-call
arguments (ports, hosts, backlogs) live here too, so that every refusal reads the same, and so do
the deadlines of calls that pass their time on to the helper.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

import trio

from .._child.helper import SECRET_ENV, helper_environment
from .._util import is_int
from ..errors import InvalidArgumentError, redact
from .supervisor import RestartPolicy

__all__ = [
    "CALL_BOUND", "DEFAULT_BACKLOG", "DIAL_BOUND", "PING_BOUND", "NodeConfig", "call_deadline",
    "check_backlog", "check_host", "check_port", "check_timeout", "limit_until", "ms_until",
]

_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_TAG = re.compile(r"^tag:[A-Za-z0-9][A-Za-z0-9_-]*$")
DEFAULT_BACKLOG: Final = 128
# Calls that pass their time to the helper follow the caller's deadline; without one these bound
# them, so that nothing waits forever on a helper.
DIAL_BOUND: Final = 30.0
PING_BOUND: Final = 10.0
# The bound of every other call that waits in the helper (status, whois, logout, cert_domains,
# cert_pair, listen_tls, listen_funnel): the helper gets the time left as timeout_ms, and no
# constant of its own (docs/protocol.md §4).
CALL_BOUND: Final = 60.0
# A helper that has not answered this long after the timeout it was given is treated as hung.
_ANSWER_GRACE: Final = 5.0
_MAX_HELPER_MS: Final = (1 << 31) - 1
# The largest timeout argument: about 31 years, far inside what select() and time_t take.
_MAX_TIMEOUT: Final = 1e9


def check_port(port: object, what: str = "port") -> int:
    if not is_int(port) or not 1 <= port <= 65535:
        raise InvalidArgumentError(f"{what} must be an integer from 1 to 65535, got {port!r}")
    return port


def check_backlog(backlog: object) -> int:
    if not is_int(backlog) or not 1 <= backlog <= 4096:
        raise InvalidArgumentError(f"backlog must be an integer from 1 to 4096, got {backlog!r}")
    return backlog


def check_host(host: object) -> str:
    if not isinstance(host, str) or not 0 < len(host) <= 253 or any(c.isspace() for c in host):
        raise InvalidArgumentError(f"host must be a tailnet name or IP address, got {host!r}")
    return host


def check_timeout(timeout: object, what: str = "timeout") -> float | None:
    """None (no deadline), or a finite positive number of seconds as a float.

    The one rule for every timeout argument, the trio node's and the faces' alike. Not a bool
    (Python counts it as an int), not NaN, and not infinite: None is how to say "no deadline",
    and an infinite or absurdly large number would reach ``select``/``time_t`` in the blocking
    face and fail there with an OverflowError instead of here with a clear message.

    Raises:
        InvalidArgumentError: anything else.
    """
    if timeout is None:
        return None
    if (not (is_int(timeout) or isinstance(timeout, float)) or not 0 < timeout <= _MAX_TIMEOUT):
        raise InvalidArgumentError(
            f"{what} must be None or a positive number of seconds (at most {_MAX_TIMEOUT:g}), "
            f"got {timeout!r}")
    return float(timeout)


def _check_route(route: object) -> str:
    try:
        net = ipaddress.ip_network(route) if isinstance(route, str) else None
    except ValueError:
        net = None
    if net is None:
        raise InvalidArgumentError(
            f"invalid route {route!r}: routes are network prefixes such as '10.77.0.0/24' "
            "(host bits zero)")
    return str(net)


def _is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True, eq=False)
class NodeConfig:
    """A node's settings, validated (see :class:`~tsproc.Node` for what each one means).

    Raises:
        InvalidArgumentError: a value is out of range or of the wrong type; the message says
            which and what is allowed.
    """

    hostname: str
    auth_key: str | None = field(default=None, repr=False)  # a secret: never in a repr
    control_url: str | None = None
    state_dir: str | os.PathLike[str] | None = None
    ephemeral: bool = False
    tags: Iterable[str] = ()
    up_timeout: float | None = 30.0
    wait_running: bool = True
    restart: RestartPolicy | None = None
    memory_limit: int | None = None
    helper_env: Mapping[str, str] | None = None
    helper_path: str | os.PathLike[str] | None = None
    advertise_routes: Iterable[str] = ()
    acme_directory_url: str | None = None
    acme_roots: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        hostname, auth_key, control_url = self.hostname, self.auth_key, self.control_url
        if not isinstance(hostname, str) or not _HOSTNAME.match(hostname):
            raise InvalidArgumentError(
                f"invalid hostname {hostname!r}: use 1 to 63 letters, digits and hyphens, "
                "not starting or ending with a hyphen"
            )
        if auth_key is not None and (not isinstance(auth_key, str) or not auth_key.strip()):
            raise InvalidArgumentError("auth_key must be a non-empty string or None")
        if control_url is not None:
            parts = urlsplit(control_url) if isinstance(control_url, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
                raise InvalidArgumentError(
                    f"control_url must be an http:// or https:// URL, got {control_url!r}"
                )
        tags = tuple(self.tags)
        for tag in tags:
            if not isinstance(tag, str) or not _TAG.match(tag):
                raise InvalidArgumentError(f"invalid tag {tag!r}: tags look like 'tag:web'")
        check_timeout(self.up_timeout, "up_timeout")
        memory_limit = self.memory_limit
        if memory_limit is not None and (not is_int(memory_limit) or memory_limit < 16 << 20):
            raise InvalidArgumentError("memory_limit must be a number of bytes, at least 16 MiB")
        helper_env = dict(self.helper_env or {})
        for key, value in helper_env.items():
            if not isinstance(key, str) or not isinstance(value, str) or not key:
                raise InvalidArgumentError("helper_env maps names to strings")
            if key in SECRET_ENV or redact(value) != value:
                raise InvalidArgumentError(
                    f"helper_env[{key!r}] looks like a credential: pass auth keys as auth_key, "
                    "never through the environment"
                )
        routes = tuple(_check_route(r) for r in self.advertise_routes)
        acme_url, acme_roots = self.acme_directory_url, self.acme_roots
        if acme_url is not None and (
            not isinstance(acme_url, str) or urlsplit(acme_url).scheme != "https"
        ):
            raise InvalidArgumentError(
                f"acme_directory_url must be an https:// URL, got {acme_url!r}")
        if acme_roots is not None and (
            not isinstance(acme_roots, str) or "-----BEGIN CERTIFICATE-----" not in acme_roots
        ):
            raise InvalidArgumentError("acme_roots must be PEM certificates")
        # Frozen: normalised values are set the way dataclasses' own __init__ does.
        object.__setattr__(self, "tags", tags)
        object.__setattr__(self, "advertise_routes", routes)
        object.__setattr__(self, "helper_env", MappingProxyType(helper_env))
        object.__setattr__(self, "restart", self.restart or RestartPolicy())

    @property
    def policy(self) -> RestartPolicy:
        assert self.restart is not None  # __post_init__ set the default
        return self.restart

    def helper_args(self) -> list[str]:
        """The argv (after the binary) of this node's helpers."""
        # tsnet's backend log is very chatty: only ask for it when someone will read it.
        verbose = logging.getLogger("tsproc.helper").isEnabledFor(logging.DEBUG)
        return ["node", f"-tsnet-logs={'true' if verbose else 'false'}"]

    def helper_environment(self, generation: int) -> dict[str, str]:
        """The environment of this node's helper number *generation*: the host's without
        credentials, this node's knobs, and what a local tailnet needs."""
        env: dict[str, str] = {**(self.helper_env or {}),
                               "TSPROC_HELPER_GENERATION": str(generation)}
        if self.control_url and _is_loopback_url(self.control_url):
            # A local tailnet: no port mapping (it probes the LAN gateway), no LAN endpoints.
            env.update(TS_DISABLE_PORTMAPPER="1", TS_DEBUG_OMIT_LOCAL_ADDRS="1")
        if self.memory_limit is not None:
            env["GOMEMLIMIT"] = str(self.memory_limit)
        return helper_environment(env)

    def start_params(self, state_dir: Path) -> dict[str, Any]:
        """The params of the ``start`` request (the auth key travels only here)."""
        params: dict[str, Any] = {
            "hostname": self.hostname,
            "state_dir": str(state_dir),
            "ephemeral": self.ephemeral,
            "tags": list(self.tags),
        }
        if self.auth_key:
            params["auth_key"] = self.auth_key
        if self.control_url:
            params["control_url"] = self.control_url
        if self.advertise_routes:
            params["advertise_routes"] = list(self.advertise_routes)
        if self.acme_directory_url:
            params["acme_directory_url"] = self.acme_directory_url
        if self.acme_roots:
            params["acme_roots"] = self.acme_roots
        return params


def call_deadline(bound: float) -> tuple[float, float | None]:
    """The deadline of a call that passes its time to the helper: the caller's effective
    deadline, else *bound* seconds from now. Second item: the node's own deadline (None when
    the caller's scope enforces it: then nothing here raises at the deadline, the scope does)."""
    caller = trio.current_effective_deadline()
    if math.isfinite(caller):
        return caller, None
    own = trio.current_time() + bound
    return own, own


def ms_until(deadline: float) -> int:
    """The helper's timeout_ms for *deadline* (at least 1 ms, at most what it accepts)."""
    return max(1, min(_MAX_HELPER_MS, int((deadline - trio.current_time()) * 1000)))


def limit_until(deadline: float) -> float:
    """How long to wait for the helper's answer to a request that ends at *deadline*: a helper
    silent that long after its own timeout is treated as hung (NodeTimeoutError)."""
    return max(0.0, deadline - trio.current_time()) + _ANSWER_GRACE
