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
from .statestore import StateKind, StoreAnswers, check_state
from .supervisor import RestartPolicy

__all__ = [
    "CALL_BOUND", "DEFAULT_BACKLOG", "DIAL_BOUND", "EXIT_NODE_BOUND", "MEMORY_PROFILES",
    "PING_BOUND", "MemoryProfile", "NodeConfig", "call_deadline", "check_backlog",
    "check_exit_node", "check_host", "check_port", "check_timeout", "limit_until", "ms_until",
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
# Setting the exit node resolves its name from the netmap and edits prefs: quick, but bounded.
EXIT_NODE_BOUND: Final = 30.0
# A helper that has not answered this long after the timeout it was given is treated as hung.
_ANSWER_GRACE: Final = 5.0
_MAX_HELPER_MS: Final = (1 << 31) - 1
# The largest timeout argument: about 31 years, far inside what select() and time_t take.
_MAX_TIMEOUT: Final = 1e9


@dataclass(frozen=True, slots=True)
class MemoryProfile:
    """What a ``memory_profile`` asks of the helper.

    Attributes:
        env: Go runtime variables; the node's own ``memory_limit`` and ``helper_env`` win
            over them.
        tcp_buffer_max: the cap on netstack's TCP send and receive buffers, i.e. on every TCP
            window of the node (``start``'s ``tcp_buffer_max``); None keeps tsnet's 8 MiB
            receive and 6 MiB send maxima.
        release_code_pages: once up, the helper unmaps the pages of its binary it does not use
            (``start``'s ``release_code_pages``).
    """

    env: Mapping[str, str]
    tcp_buffer_max: int | None = None
    release_code_pages: bool = False


# README, "A node on a small machine", has the figures behind these values.
MEMORY_PROFILES: Final[Mapping[str, MemoryProfile]] = MappingProxyType({
    "default": MemoryProfile(MappingProxyType({})),
    "small": MemoryProfile(MappingProxyType({"GOGC": "25"}), tcp_buffer_max=64 << 10,
                           release_code_pages=True),
})


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


def check_exit_node(peer: object) -> str:
    """A tailnet name or IP for an exit node (None, which clears it, is the caller's case)."""
    if not isinstance(peer, str) or not peer or any(c.isspace() for c in peer):
        raise InvalidArgumentError(
            f"exit_node must be a tailnet node's name or IP, or None, got {peer!r}")
    return peer


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


def _check_oauth(secret: str | None, client_id: str | None, id_token: str | None,
                 audience: str | None, *, with_key: bool, tags: tuple[str, ...]) -> None:
    """tsnet's rules for OAuth and workload identity, checked before a helper starts."""
    if not (secret or client_id or id_token or audience):
        return
    problem = None
    if with_key:
        problem = "give auth_key or OAuth credentials, not both"
    elif secret and (client_id or id_token or audience):
        problem = "client_secret excludes workload identity (client_id, id_token, audience)"
    elif not secret and not client_id:
        problem = "id_token and audience need client_id (workload identity federation)"
    elif client_id and bool(id_token) == bool(audience):
        problem = "client_id needs exactly one of id_token and audience"
    elif not tags:
        problem = "a node that logs in with OAuth credentials must advertise tags (tags=...)"
    if problem is not None:
        raise InvalidArgumentError(problem)


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
    memory_profile: str = "default"
    helper_env: Mapping[str, str] | None = None
    helper_path: str | os.PathLike[str] | None = None
    advertise_routes: Iterable[str] = ()
    acme_directory_url: str | None = None
    acme_roots: str | None = field(default=None, repr=False)
    state: object = field(default=None, repr=False)
    # OAuth client secret and workload identity (tsnet's ClientSecret, ClientID, IDToken,
    # Audience): secrets, or close to them, kept out of reprs like the auth key.
    client_secret: str | None = field(default=None, repr=False)
    client_id: str | None = field(default=None, repr=False)
    id_token: str | None = field(default=None, repr=False)
    audience: str | None = field(default=None, repr=False)
    exit_node: str | None = None
    advertise_exit_node: bool = False
    state_kind: StateKind = field(default="dir", init=False)

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
        if not isinstance(self.memory_profile, str) or self.memory_profile not in MEMORY_PROFILES:
            raise InvalidArgumentError(
                f"memory_profile must be one of {', '.join(map(repr, MEMORY_PROFILES))}, "
                f"got {self.memory_profile!r}")
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
        for name in ("client_secret", "client_id", "id_token", "audience"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise InvalidArgumentError(f"{name} must be a non-empty string or None")
        _check_oauth(self.client_secret, self.client_id, self.id_token, self.audience,
                     with_key=bool(auth_key), tags=tags)
        if self.exit_node is not None:
            check_exit_node(self.exit_node)
        kind, where = check_state(self.state, self.state_dir)
        if kind == "memory" and not self.ephemeral:
            raise InvalidArgumentError(
                "state='memory' needs ephemeral=True: a node that forgets its keys when it "
                "stops must not stay on the tailnet (tsnet's rule)")
        # Frozen: normalised values are set the way dataclasses' own __init__ does.
        object.__setattr__(self, "state_kind", kind)
        object.__setattr__(self, "state_dir", where if kind == "dir" else None)
        object.__setattr__(self, "state", where if kind == "store" else None)
        object.__setattr__(self, "tags", tags)
        object.__setattr__(self, "advertise_routes", routes)
        object.__setattr__(self, "helper_env", MappingProxyType(helper_env))
        object.__setattr__(self, "restart", self.restart or RestartPolicy())

    @property
    def temporary_state_dir(self) -> bool:
        """Whether the helper's directory is a private temporary one, removed on close: the
        node keeps its state elsewhere, or nowhere it must outlive the node."""
        return self.ephemeral or self.state_kind != "dir"

    def state_answers(self) -> StoreAnswers | None:
        """What answers the helper's state_read/state_write requests (None: it asks nobody)."""
        return StoreAnswers(self.state) if self.state_kind == "store" else None  # type: ignore[arg-type]

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
        env: dict[str, str] = {**MEMORY_PROFILES[self.memory_profile].env,
                               **(self.helper_env or {}),
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
        profile = MEMORY_PROFILES[self.memory_profile]
        if profile.tcp_buffer_max is not None:
            params["tcp_buffer_max"] = profile.tcp_buffer_max
        if profile.release_code_pages:
            params["release_code_pages"] = True
        if self.advertise_exit_node:
            params["advertise_exit_node"] = True
        if self.state_kind == "memory":
            params["memory_state"] = True
        elif self.state_kind == "store":
            params["host_state"] = True
        for name in ("client_secret", "client_id", "id_token", "audience"):
            if getattr(self, name):
                params[name] = getattr(self, name)
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
