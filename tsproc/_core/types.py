"""Plain data the node hands out: status, identities and events. No behaviour here.

The ``from_wire`` parsers take what the helper answered: a missing or mistyped text field reads
as '', and a mistyped count (or a ping answer without its ip) is a
:class:`~tsproc.ProtocolError` (never a ValueError).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._util import is_int
from ..errors import ProtocolError

__all__ = [
    "Addr",
    "AuthUrlEvent",
    "CrashLoopEvent",
    "Event",
    "HelperRestartedEvent",
    "IPAddress",
    "NodeInfo",
    "NodeState",
    "PeerStatus",
    "PingResult",
    "StateEvent",
    "Status",
    "UserInfo",
    "WhoIs",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Addr = tuple[str, int]
"""A tailnet (host, port), as the connection types report them."""


class NodeState(enum.Enum):
    """Where a :class:`~tsproc.Node` is in its life (see docs/design.md, supervision)."""

    NEW = "new"
    """Made, not started yet: ``async with node:`` starts it."""
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    FAILED = "failed"
    CLOSED = "closed"


def _ips(values: object) -> tuple[IPAddress, ...]:
    if not isinstance(values, list):
        return ()
    out: list[IPAddress] = []
    for value in values:
        try:
            out.append(ipaddress.ip_address(str(value)))
        except ValueError:
            continue
    return tuple(out)


def _count(m: Mapping[str, Any], key: str) -> int:
    """A non-negative integer field (missing: 0). Anything else is the helper's fault."""
    value = m.get(key, 0)
    if value is None:
        return 0
    if not is_int(value) or value < 0:
        raise ProtocolError(f"field {key!r} must be a non-negative integer, got {value!r}")
    return value


def _str(m: Mapping[str, Any], key: str) -> str:
    value = m.get(key)
    return value if isinstance(value, str) else ""


def _strs(values: object) -> tuple[str, ...]:
    return tuple(str(v) for v in values) if isinstance(values, list) else ()


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """One node of the tailnet as this node sees it (``Status.peers``, and ``Status.self``)."""

    id: str
    """The node's stable ID, e.g. ``nXXXXCNTRL``; the same as :attr:`NodeInfo.id`."""
    hostname: str
    """The hostname the node asked for, e.g. ``web``."""
    dns_name: str
    """The node's full MagicDNS name, with the trailing dot: ``web.tailnet.test.``."""
    tailscale_ips: tuple[IPAddress, ...]
    """The node's tailnet addresses (IPv4 first)."""
    tags: tuple[str, ...]
    """The node's ACL tags, e.g. ``("tag:server",)``; empty for a user's node."""
    online: bool
    """Whether the control server sees the node connected."""
    relay: str
    """The DERP region code of the node's home relay ('' if unknown)."""
    endpoint: str
    """The direct ip:port the path to the node uses now, or '' when it goes through DERP."""
    primary_routes: tuple[str, ...] = ()
    """The subnet routes the tailnet sends through this node (approved ``advertise_routes``)."""

    @property
    def direct(self) -> bool:
        """True when traffic to the node goes directly, False when through a DERP relay."""
        return bool(self.endpoint)

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> PeerStatus:
        return cls(
            id=_str(m, "id"),
            hostname=_str(m, "hostname"),
            dns_name=_str(m, "dns_name"),
            tailscale_ips=_ips(m.get("tailscale_ips")),
            tags=_strs(m.get("tags")),
            online=bool(m.get("online")),
            relay=_str(m, "relay"),
            endpoint=_str(m, "cur_addr"),
            primary_routes=_strs(m.get("primary_routes")),
        )


@dataclass(frozen=True, slots=True)
class Status:
    """A snapshot of the node (``await node.status()``)."""

    backend_state: str
    tailscale_ips: tuple[IPAddress, ...]
    hostname: str
    dns_name: str
    magic_dns_suffix: str
    auth_url: str
    health: tuple[str, ...]
    self: PeerStatus
    peers: tuple[PeerStatus, ...]
    helper_goroutines: int
    helper_listeners: int
    helper_conns: int
    helper_pid: int
    helper_restarts: int

    @classmethod
    def from_wire(cls, m: Mapping[str, Any], *, pid: int, restarts: int) -> Status:
        peers = m.get("peers")
        health = m.get("health")
        self_peer = m.get("self")
        return cls(
            backend_state=_str(m, "backend_state"),
            tailscale_ips=_ips(m.get("tailscale_ips")),
            hostname=_str(m, "hostname"),
            dns_name=_str(m, "dns_name"),
            magic_dns_suffix=_str(m, "magic_dns_suffix"),
            auth_url=_str(m, "auth_url"),
            health=tuple(str(h) for h in health) if isinstance(health, list) else (),
            self=PeerStatus.from_wire(self_peer if isinstance(self_peer, dict) else {}),
            peers=tuple(PeerStatus.from_wire(p) for p in peers if isinstance(p, dict))
            if isinstance(peers, list)
            else (),
            helper_goroutines=_count(m, "goroutines"),
            helper_listeners=_count(m, "listeners"),
            helper_conns=_count(m, "conns"),
            helper_pid=pid,
            helper_restarts=restarts,
        )


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """The tailnet node behind an address (``WhoIs.node``); its fields mean what the
    :class:`PeerStatus` fields of the same name mean."""

    id: str
    """The node's stable ID; the same as :attr:`PeerStatus.id`."""
    hostname: str
    """The hostname the node asked for, e.g. ``web``."""
    dns_name: str
    """The node's full MagicDNS name, with the trailing dot: ``web.tailnet.test.``."""
    tailscale_ips: tuple[IPAddress, ...]
    """The node's tailnet addresses."""
    tags: tuple[str, ...]
    """The node's ACL tags; empty for a user's node."""


@dataclass(frozen=True, slots=True)
class UserInfo:
    """The user who owns a node (``WhoIs.user``). Tagged nodes belong to a tagged-devices user."""

    id: str
    """The user's ID on the control server, as a string."""
    login_name: str
    """The user's login, e.g. ``alice@example.com``."""
    display_name: str
    """The user's name for people, e.g. ``Alice``."""


@dataclass(frozen=True, slots=True)
class WhoIs:
    """Who is on the other end of a tailnet address: the node, and its user."""

    node: NodeInfo
    user: UserInfo

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> WhoIs:
        node = m.get("node") if isinstance(m.get("node"), dict) else {}
        user = m.get("user") if isinstance(m.get("user"), dict) else {}
        assert isinstance(node, dict) and isinstance(user, dict)
        return cls(
            node=NodeInfo(
                id=str(node.get("id", "")),
                hostname=_str(node, "host_name"),
                dns_name=_str(node, "name"),
                tailscale_ips=_ips(node.get("addresses")),
                tags=_strs(node.get("tags")),
            ),
            user=UserInfo(
                id=str(user.get("id", "")),
                login_name=_str(user, "login_name"),
                display_name=_str(user, "display_name"),
            ),
        )


@dataclass(frozen=True, slots=True)
class PingResult:
    """The answer to :meth:`~tsproc.Node.ping`: a TSMP ping through WireGuard."""

    ip: IPAddress
    """The peer's tailnet address that was pinged."""
    hostname: str
    """The peer's hostname."""
    dns_name: str
    """The peer's full MagicDNS name."""
    latency: float
    """Round-trip time in seconds."""
    endpoint: str
    """The direct ip:port the path uses, or '' when it goes through a DERP relay."""
    relay: str
    """The DERP region code of the peer's home relay ('' if unknown)."""

    @property
    def direct(self) -> bool:
        """True when the peers talk directly, False when through DERP."""
        return bool(self.endpoint)

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> PingResult:
        latency = m.get("latency_s")
        ips = _ips([m.get("ip")])
        if not ips:
            # Without it the answer says nothing: the helper broke the protocol.
            raise ProtocolError(f"ping_peer answered without a valid ip: {m.get('ip')!r}")
        return cls(
            ip=ips[0],
            hostname=_str(m, "hostname"),
            dns_name=_str(m, "dns_name"),
            latency=float(latency) if isinstance(latency, int | float) else 0.0,
            endpoint=_str(m, "endpoint"),
            relay=_str(m, "relay"),
        )


@dataclass(frozen=True, slots=True)
class StateEvent:
    """The node's state changed (``state`` is a :class:`NodeState`), or the tailnet backend's
    (``backend_state``: NeedsLogin, Starting, Running …)."""

    state: NodeState
    backend_state: str
    health: tuple[str, ...] = ()
    """tsnet's warnings as of this event, e.g. ``("Unable to connect to the Tailscale
    coordination server ... connect: connection refused",)``; empty when all is well."""


@dataclass(frozen=True, slots=True)
class AuthUrlEvent:
    """The node needs an interactive login: a person must open ``url``."""

    url: str


@dataclass(frozen=True, slots=True)
class HelperRestartedEvent:
    """The helper died or hung and was replaced.

    Attributes:
        generation: the new helper's number (the first helper is 1).
        returncode: the old helper's exit status; negative for a signal (-9: SIGKILL).
        reason: why it was replaced, e.g. "killed by SIGKILL", "heartbeat missed".
    """

    generation: int
    returncode: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class CrashLoopEvent:
    """The supervisor gave up: the node is failed. ``error`` says why."""

    error: str


Event = StateEvent | AuthUrlEvent | HelperRestartedEvent | CrashLoopEvent
