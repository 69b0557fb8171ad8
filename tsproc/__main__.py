"""The ``tsproc`` command line (also ``python -m tsproc``)."""

from __future__ import annotations

import argparse
import logging
import sys

import trio

from . import __version__
from ._demo import run_demo
from .errors import TsprocError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tsproc",
        description="A Tailscale node in a supervised helper process, for trio programs.",
    )
    parser.add_argument("--version", action="version", version=f"tsproc {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v: info, -vv: debug, including the helper's logs)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser(
        "demo",
        help="run a local tailnet with two nodes and fetch HTTP across it",
        description="Start a local tailnet on 127.0.0.1 and two nodes; one serves HTTP, the "
        "other fetches it. Prints the response, the server's WhoIs view of the client and "
        "the transfer rate.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.command == "demo":
            trio.run(run_demo)
    except TsprocError as exc:
        print(f"tsproc: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
