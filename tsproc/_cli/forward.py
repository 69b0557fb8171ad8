"""``tsproc forward`` and ``tsproc proxy``: a node's forward or SOCKS5 proxy until Ctrl-C.

Each prints its endpoint on one line of stdout, for a script to read — the Unix socket's path or
``127.0.0.1:PORT`` for a forward, the proxy URL (with its credential) for the proxy — and says
on stderr how to use it; the credential appears on stdout only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import trio

from .start import running_node

__all__ = ["add_forward_commands", "run_forward", "run_proxy"]


def add_forward_commands(commands: argparse._SubParsersAction[Any],
                         node_options: argparse.ArgumentParser,
                         host_port: Callable[[str], tuple[str, int]]) -> None:
    """The two commands' parsers."""
    forward = commands.add_parser(
        "forward",
        parents=[node_options],
        help="a local endpoint for a tailnet service (like ssh -L), until Ctrl-C",
        description="Carry every connection to a local endpoint to HOST:PORT on the tailnet. "
        "By default the endpoint is a Unix socket .s.PGSQL.PORT in a new private directory "
        "(psql -h DIR -p PORT finds it), open to your user only; --port makes it a TCP port on "
        "127.0.0.1, open to every local user. Prints the socket's path or 127.0.0.1:PORT on "
        "one line, then runs until Ctrl-C.",
    )
    forward.add_argument("target", type=host_port, metavar="HOST:PORT",
                         help="a tailnet node (MagicDNS name or tailnet IP) and its port")
    _endpoint_options(forward)

    proxy = commands.add_parser(
        "proxy",
        parents=[node_options],
        help="a SOCKS5 proxy into the tailnet, until Ctrl-C",
        description="Run a SOCKS5 proxy (CONNECT, with a fresh username and password) that "
        "reaches tailnet names and addresses only. Prints the proxy URL, credential included, "
        "on one line (socks5h://user:pass@localhost/PATH for a Unix socket, as curl takes it; "
        "socks5h://user:pass@127.0.0.1:PORT with --port), then runs until Ctrl-C.",
    )
    _endpoint_options(proxy)


def _endpoint_options(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--unix", metavar="DIR",
                       help="make the private directory for the socket here (it must not exist "
                       "yet; default: a new temporary directory)")
    where.add_argument("--port", type=int, metavar="N",
                       help="listen on 127.0.0.1:N instead (0: any free port)")


async def run_forward(args: argparse.Namespace) -> None:
    host, port = args.target
    async with running_node(args) as node, \
            node.forward(host, port, unix_dir=args.unix, local_port=args.port) as fwd:
        if fwd.path is not None:
            print(fwd.path, flush=True)
            print(f"tsproc: forwarding {fwd.path} -> {host}:{port} on the tailnet (libpq: "
                  f"host={fwd.host} port={fwd.port}); Ctrl-C to stop",
                  file=sys.stderr, flush=True)
        else:
            print(f"127.0.0.1:{fwd.port}", flush=True)
            print(f"tsproc: forwarding 127.0.0.1:{fwd.port} -> {host}:{port} on the tailnet "
                  "(every local user can connect to it); Ctrl-C to stop",
                  file=sys.stderr, flush=True)
        await trio.sleep_forever()


async def run_proxy(args: argparse.Namespace) -> None:
    async with running_node(args) as node, \
            node.socks5(unix_dir=args.unix, local_port=args.port) as proxy:
        print(proxy.url, flush=True)
        print(f"tsproc: SOCKS5 proxy at {proxy.address}, reaching the tailnet only; "
              "Ctrl-C to stop", file=sys.stderr, flush=True)
        await trio.sleep_forever()
