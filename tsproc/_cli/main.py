"""The ``tsproc`` command line (also ``python -m tsproc``).

    tsproc demo                              a local tailnet, two nodes, HTTP across them
    tsproc control                           run a local tailnet and print its control URL
    tsproc serve 80 --to 127.0.0.1:8000      expose a local TCP service on the tailnet
    tsproc connect web 80                    stdin/stdout over the tailnet, like netcat
    tsproc forward db:5432 [--unix DIR|--port N]  a local endpoint for a tailnet service
    tsproc proxy [--unix DIR|--port N]       a SOCKS5 proxy into the tailnet
    tsproc status                            start the node, print its status and peers

The auth key comes only from the ``TS_AUTHKEY`` environment variable: a command-line flag would
be visible to every local user in ``ps``. While a node starts, a progress line on stderr shows
its state, and an interactive login URL is printed prominently.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, NoReturn

import trio

from .. import __version__
from .._core.streams import TailnetStream
from .._core.types import PeerStatus, Status, WhoIs
from ..errors import TsprocError, redact
from ..testing import local_tailnet
from .demo import run_demo
from .forward import add_forward_commands, run_forward, run_proxy
from .start import AUTH_KEY_ENV, running_node

__all__ = ["main"]

_CHUNK: Final = 1 << 16


class _UsageError(Exception):
    """A bad argument found after parsing; reported like argparse's own errors."""


# -- argument parsing --


class _Parser(argparse.ArgumentParser):
    """argparse, but its error messages (which quote the arguments) never show an auth key."""

    def error(self, message: str) -> NoReturn:
        redacted = redact(message)
        if redacted != message:
            redacted += f" (tsproc reads the auth key from ${AUTH_KEY_ENV} only)"
        super().error(redacted)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number (1-65535): {text!r}")
    return port


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, _port(port)


def _node_options() -> _Parser:
    parent = _Parser(add_help=False)
    group = parent.add_argument_group(
        "node options",
        f"The auth key, if needed, is read from ${AUTH_KEY_ENV} (never from the command line).",
    )
    group.add_argument("--hostname", default="tsproc",
                       help="the node's name on the tailnet (default: %(default)s)")
    group.add_argument("--control-url", metavar="URL",
                       help="the coordination server (default: Tailscale's); for a local tailnet, "
                       "the URL `tsproc control` prints")
    group.add_argument("--state-dir", metavar="DIR",
                       help="where the node keeps its identity (default: a per-user directory "
                       "named after --hostname)")
    group.add_argument("--ephemeral", action="store_true",
                       help="register as an ephemeral node, removed from the tailnet when it "
                       "stops (its state is kept in a temporary directory)")
    group.add_argument("--tag", action="append", default=[], metavar="TAG", dest="tags",
                       help="an ACL tag to advertise, like tag:web (repeatable; a service host "
                       "needs one)")
    group.add_argument("--exit-node", metavar="NODE",
                       help="send traffic for addresses outside the tailnet through this exit "
                       "node (its name or tailnet IP)")
    group.add_argument("--advertise-exit-node", action="store_true",
                       help="offer this node as an exit node")
    group.add_argument("--timeout", type=float, metavar="SECONDS",
                       help="give up if the node is not running within this time "
                       "(default: wait, e.g. for an interactive login)")
    return parent


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tsproc",
        description="A Tailscale node in a supervised helper process, for trio programs.",
        epilog="Run `tsproc COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"tsproc {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v: info, -vv: debug, including the helper's logs)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    node_options = _node_options()

    commands.add_parser(
        "demo",
        help="run a local tailnet with two nodes and fetch HTTP across it",
        description="Start a local tailnet on 127.0.0.1 and two nodes; one serves HTTP, the "
        "other fetches it. Prints the response, the server's WhoIs view of the client and "
        "the transfer rate.",
    )

    control = commands.add_parser(
        "control",
        help="run a local tailnet (control server, DERP, STUN on 127.0.0.1) until Ctrl-C",
        description="Run Tailscale's test control server with a DERP relay and a STUN server on "
        "127.0.0.1 and print its control URL on stdout; nodes join with --control-url URL. "
        "Runs until Ctrl-C.",
    )
    control.add_argument("--require-auth-key", action="store_true",
                         help=f"nodes must present the key in ${AUTH_KEY_ENV} (read from the "
                         "environment, never the command line)")
    control.add_argument("--interactive-login", action="store_true",
                         help="nodes without a key get a login URL to open")
    control.add_argument("--https", action="store_true",
                         help="also issue HTTPS certificates (an ACME server on 127.0.0.1; its "
                         "CA certificate is written to a file named on stderr) and relay Funnel "
                         "through a local ingress node")

    serve = commands.add_parser(
        "serve",
        parents=[node_options],
        help="expose a local TCP service on the tailnet",
        description="Listen on PORT on the tailnet and forward each connection to HOST:PORT "
        "(a local service). Prints a line per connection with the peer's tailnet identity "
        "(from WhoIs, not from anything the peer says). Runs until Ctrl-C.",
    )
    serve.add_argument("port", type=_port, metavar="PORT", help="the tailnet port to listen on")
    serve.add_argument("--to", type=_host_port, required=True, metavar="HOST:PORT",
                       help="where to forward connections, e.g. 127.0.0.1:8000")
    serve.add_argument("--service", metavar="svc:NAME",
                       help="host the Tailscale Service NAME on PORT instead of the node's own "
                       "address (clients dial NAME.<tailnet domain>); needs --tag")

    connect = commands.add_parser(
        "connect",
        parents=[node_options],
        help="connect stdin/stdout to a tailnet service, like netcat",
        description="Dial HOST:PORT over the tailnet; copy stdin to it and it to stdout. At EOF "
        "on stdin the connection is half-closed (the peer sees EOF); the command ends when the "
        "peer closes its side.",
    )
    connect.add_argument("host", metavar="HOST",
                         help="a tailnet node: MagicDNS name (short or full) or tailnet IP")
    connect.add_argument("port", type=_port, metavar="PORT")

    add_forward_commands(commands, node_options, _host_port)

    status = commands.add_parser(
        "status",
        parents=[node_options],
        help="start the node and print its status and peers",
        description="Start the node (with its saved identity, or joining the tailnet), print "
        "its addresses, names and peers, and stop it.",
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


# -- commands --


def _identity(who: WhoIs | None) -> str:
    if who is None:
        return "unknown peer"
    text = f"{who.user.login_name or '?'} ({who.node.dns_name.rstrip('.') or who.node.hostname})"
    if who.node.tags:
        text += f" tags={','.join(who.node.tags)}"
    return text


async def _pump(source: trio.abc.ReceiveStream, sink: trio.abc.HalfCloseableStream) -> None:
    """Copy until EOF, then pass the EOF on (a half-close)."""
    while data := await source.receive_some(_CHUNK):
        await sink.send_all(data)
    await sink.send_eof()


async def _splice(tailnet: TailnetStream, local: trio.abc.HalfCloseableStream) -> None:
    """Copy both ways with half-closes until both directions end. A broken side ends both,
    and the tailnet peer reads a reset: what it got so far is not the whole reply."""
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pump, tailnet, local)
            nursery.start_soon(_pump, local, tailnet)
    except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await tailnet.reset()


async def _serve(args: argparse.Namespace) -> None:
    to_host, to_port = args.to
    async with running_node(args) as node:
        if args.service:
            listener = await node.listen_service(args.service, args.port)
            where = f"service {args.service}, hosted by {node.hostname}"
        else:
            listener = await node.listen(args.port)
            where = f"{node.hostname} ({node.tailscale_ips[0]})"
        print(f"serving tailnet port {args.port} of {where} -> {to_host}:{to_port}",
              flush=True)

        async def forward(stream: TailnetStream) -> None:
            async with stream:
                ip, port = stream.remote_addr
                who: WhoIs | None = None
                with trio.move_on_after(10):
                    try:
                        who = await node.whois(stream.remote_addr)
                    except TsprocError:
                        who = None
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                print(f"{stamp} {ip}:{port} {_identity(who)} -> {to_host}:{to_port}",
                      flush=True)
                try:
                    upstream = await trio.open_tcp_stream(to_host, to_port)
                except OSError as exc:
                    print(f"tsproc: {to_host}:{to_port}: {_os_reason(exc)}",
                          file=sys.stderr, flush=True)
                    # The peer reads a reset, as if it had dialled the backend itself.
                    await stream.reset()
                    return
                async with upstream:
                    await _splice(stream, upstream)

        await trio.serve_listeners(forward, [listener])


def _os_reason(exc: OSError) -> str:
    """What went wrong, in the system's words: trio's "all attempts to connect … failed"
    keeps the attempts' errors (Connection refused, say) in its cause."""
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        reasons = {e.strerror for e in cause.exceptions if isinstance(e, OSError) and e.strerror}
        if reasons:
            return ", ".join(sorted(reasons))
    return exc.strerror or str(exc)


@asynccontextmanager
async def _std_streams() -> AsyncIterator[tuple[trio.lowlevel.FdStream, trio.lowlevel.FdStream]]:
    # FdStream makes its fd non-blocking, which is a property of the shared file description
    # (a terminal, say): put the old mode back for whoever uses it after us.
    blocking = {fd: os.get_blocking(fd) for fd in (0, 1)}
    stdin = trio.lowlevel.FdStream(os.dup(0))
    stdout = trio.lowlevel.FdStream(os.dup(1))
    try:
        yield stdin, stdout
    finally:
        with trio.CancelScope(shield=True):
            await stdin.aclose()
            await stdout.aclose()
        for fd, mode in blocking.items():
            os.set_blocking(fd, mode)


async def _connect(args: argparse.Namespace) -> None:
    async with running_node(args) as node:
        stream = await node.dial(args.host, args.port)
        async with stream, _std_streams() as (stdin, stdout):

            async def upload() -> None:
                while data := await stdin.receive_some(_CHUNK):
                    await stream.send_all(data)
                await stream.send_eof()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(upload)
                # Done when the peer is done (as netcat): a still-open stdin does not matter.
                while data := await stream.receive_some(_CHUNK):
                    try:
                        await stdout.send_all(data)
                    except trio.BrokenResourceError:
                        break  # stdout's reader went away (`| head`): nothing left to do
                nursery.cancel_scope.cancel()


def _peer_json(peer: PeerStatus) -> dict[str, Any]:
    return {
        "id": peer.id, "hostname": peer.hostname, "dns_name": peer.dns_name,
        "tailscale_ips": [str(ip) for ip in peer.tailscale_ips], "tags": list(peer.tags),
        "online": peer.online, "relay": peer.relay, "endpoint": peer.endpoint,
        "direct": peer.direct,
    }


def _status_json(status: Status) -> dict[str, Any]:
    return {
        "backend_state": status.backend_state,
        "hostname": status.hostname,
        "dns_name": status.dns_name,
        "tailscale_ips": [str(ip) for ip in status.tailscale_ips],
        "magic_dns_suffix": status.magic_dns_suffix,
        "health": list(status.health),
        "self": _peer_json(status.self),
        "peers": [_peer_json(p) for p in status.peers],
    }


def _print_status(status: Status) -> None:
    ips = " ".join(str(ip) for ip in status.tailscale_ips)
    print(f"{status.hostname}  {ips}  {status.dns_name.rstrip('.')}  {status.backend_state}")
    for warning in status.health:
        print(f"  health: {warning}")
    if not status.peers:
        print("no peers")
    for peer in sorted(status.peers, key=lambda p: p.hostname):
        peer_ips = " ".join(str(ip) for ip in peer.tailscale_ips)
        if not peer.online:
            path = "offline"
        elif peer.direct:
            path = f"direct {peer.endpoint}"
        else:
            path = f"relay {peer.relay}" if peer.relay else "idle"
        print(f"  {peer.hostname:<20} {peer_ips:<44} {peer.dns_name.rstrip('.')}  {path}")


async def _status(args: argparse.Namespace) -> None:
    async with running_node(args) as node:
        status = await node.status()
    if args.json:
        print(json.dumps(_status_json(status), indent=2))
    else:
        _print_status(status)


async def _control(args: argparse.Namespace) -> None:
    key: str | None = None
    if args.require_auth_key:
        key = os.environ.get(AUTH_KEY_ENV) or None
        if key is None:
            raise _UsageError(f"--require-auth-key needs the key in ${AUTH_KEY_ENV}")
    async with local_tailnet(require_auth_key=key, interactive_login=args.interactive_login,
                             https=args.https) as tailnet:
        print(tailnet.control_url, flush=True)
        print(f"tsproc: local tailnet running on 127.0.0.1 (DNS suffix "
              f"{tailnet.magic_dns_suffix}); join with --control-url {tailnet.control_url}",
              file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="tsproc-control-") as tmp:
            if tailnet.https:
                ca_file = trio.Path(tmp, "ca.pem")
                await ca_file.write_text(tailnet.ca_cert)
                ports = ", ".join(f"{public} on 127.0.0.1:{local}" for public, local
                                  in sorted(tailnet.info["funnel_ports"].items()))
                print(f"tsproc: HTTPS certificates from a local CA: trust {ca_file}\n"
                      f"tsproc: Funnel ports (connect with SNI <node>.{tailnet.magic_dns_suffix}): "
                      f"{ports}", file=sys.stderr, flush=True)
            print("tsproc: press Ctrl-C to stop", file=sys.stderr, flush=True)
            await trio.sleep_forever()


_COMMANDS: Final[dict[str, tuple[Callable[[argparse.Namespace], Awaitable[None]], bool]]] = {
    # name: (coroutine, whether Ctrl-C/SIGTERM is its normal way to end)
    "demo": (lambda args: run_demo(), False),
    "control": (_control, True),
    "serve": (_serve, True),
    "connect": (_connect, False),
    "forward": (run_forward, True),
    "proxy": (run_proxy, True),
    "status": (_status, False),
}


async def _run(args: argparse.Namespace) -> int:
    """Run the command; SIGINT/SIGTERM stop it cleanly (nodes log out, helpers exit)."""
    command, signal_is_normal_end = _COMMANDS[args.command]
    stopped_by: list[int] = []
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    if stopped_by:
                        os._exit(128 + signum)  # a second signal: stop waiting for cleanup
                    stopped_by.append(signum)
                    nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            await command(args)
            nursery.cancel_scope.cancel()
    if stopped_by:
        return 0 if signal_is_normal_end else 128 + stopped_by[0]
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    # A signal mask survives exec: a parent thread that blocks SIGINT (tsproc's own faces'
    # trio thread does, and so do the threads it starts, trio's cached workers among them)
    # would hand this command a Ctrl-C it never sees. Its commands end on SIGINT/SIGTERM.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    parser = _parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    timeout = getattr(args, "timeout", None)
    if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
        parser.error("--timeout must be a positive number of seconds")
    try:
        return trio.run(_run, args)
    except BaseException as exc:  # sorted below; anything else is re-raised
        error = _leaf(exc)
        if isinstance(error, _UsageError):
            parser.error(str(error))
        if isinstance(error, KeyboardInterrupt):
            return 130
        if isinstance(error, TsprocError | trio.BrokenResourceError):
            print(f"tsproc: {type(error).__name__}: {error}", file=sys.stderr)
            return 1
        raise


def _leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested single-exception groups (trio nurseries wrap)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
