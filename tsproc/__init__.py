"""tsproc: a Tailscale node inside a trio application, in a supervised helper process.

    async with tsproc.Node("web", auth_key=key) as node:
        listener = await node.listen(80)
        await trio.serve_listeners(handler, [listener])

See docs/design.md for how it works and docs/protocol.md for the helper protocol.
"""

from ._core.node import EventStream, Node
from ._core.packet import TailnetPacketConn
from ._core.serve import serve_tcp
from ._core.streams import TailnetListener, TailnetStream
from ._core.supervisor import RestartPolicy
from ._core.types import (
    AuthUrlEvent,
    CrashLoopEvent,
    Event,
    HelperRestartedEvent,
    NodeInfo,
    NodeState,
    PeerStatus,
    PingResult,
    StateEvent,
    Status,
    UserInfo,
    WhoIs,
)
from .errors import (
    AddressInUseError,
    AuthError,
    DialError,
    FunnelUnavailableError,
    HelperCrashLoop,
    HelperDiedError,
    HelperError,
    HelperNotFoundError,
    HelperVersionError,
    InvalidArgumentError,
    LimitError,
    NeedsLoginError,
    NodeClosedError,
    NodeNotStartedError,
    NodeTimeoutError,
    NotFoundError,
    ProtocolError,
    RemoteError,
    StateDirLocked,
    TlsUnavailableError,
    TsprocError,
)

__version__ = "0.1.0"

__all__ = [
    "AddressInUseError",
    "AuthError",
    "AuthUrlEvent",
    "CrashLoopEvent",
    "DialError",
    "Event",
    "EventStream",
    "FunnelUnavailableError",
    "HelperCrashLoop",
    "HelperDiedError",
    "HelperError",
    "HelperNotFoundError",
    "HelperRestartedEvent",
    "HelperVersionError",
    "InvalidArgumentError",
    "LimitError",
    "NeedsLoginError",
    "Node",
    "NodeClosedError",
    "NodeInfo",
    "NodeNotStartedError",
    "NodeState",
    "NodeTimeoutError",
    "NotFoundError",
    "PeerStatus",
    "PingResult",
    "ProtocolError",
    "RemoteError",
    "RestartPolicy",
    "StateDirLocked",
    "StateEvent",
    "Status",
    "TailnetListener",
    "TailnetPacketConn",
    "TailnetStream",
    "TlsUnavailableError",
    "TsprocError",
    "UserInfo",
    "WhoIs",
    "__version__",
    "serve_tcp",
]
