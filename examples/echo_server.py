"""An echo server on the tailnet: it greets each client by its tailnet identity, then sends
back every byte it receives.

    python examples/echo_server.py --local             # with a local tailnet of its own
    python examples/echo_server.py --control-url URL   # on a tailnet (key in $TS_AUTHKEY)
    tsproc connect echo 7 --control-url URL            # then talk to it from another node
"""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

import tsproc
from tsproc.testing import local_tailnet


@asynccontextmanager
async def joined_node(args: argparse.Namespace) -> AsyncIterator[tsproc.Node]:
    """An ephemeral node on the tailnet the arguments name, or on a local tailnet of our own."""
    if args.local:
        async with local_tailnet() as tailnet:
            print(f"local tailnet: {tailnet.control_url}", flush=True)
            async with tailnet.node(args.hostname) as node:
                yield node
    else:
        async with tsproc.Node(args.hostname, control_url=args.control_url, ephemeral=True,
                               auth_key=os.environ.get("TS_AUTHKEY") or None) as node:
            yield node


async def serve(args: argparse.Namespace) -> None:
    async with joined_node(args) as node, trio.open_nursery() as nursery:

        async def echo(stream: tsproc.TailnetStream) -> None:
            async with stream:
                # The identity comes from the tailnet (WhoIs), not from anything the client says.
                who = await node.whois(stream.remote_addr)
                print(f"connection from {who.user.login_name} on {who.node.hostname}",
                      flush=True)
                await stream.send_all(f"hello {who.node.hostname}\n".encode())
                try:
                    while data := await stream.receive_some():
                        await stream.send_all(data)
                    await stream.send_eof()
                except trio.BrokenResourceError:
                    pass  # the client went away mid-stream

        listener = await node.listen(args.port)
        nursery.start_soon(trio.serve_listeners, echo, [listener])
        print(f"ready: echo server on {node.hostname}:{args.port} ({node.tailscale_ips[0]})",
              flush=True)
        # Ctrl-C or SIGTERM: cancel the server, and the node logs out on the way out.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="An echo server on the tailnet.")
    parser.add_argument("--control-url", metavar="URL",
                        help="the tailnet's control server (default: Tailscale's)")
    parser.add_argument("--local", action="store_true",
                        help="run a local tailnet in this process and print its URL")
    parser.add_argument("--hostname", default="echo")
    parser.add_argument("--port", type=int, default=7)
    trio.run(serve, parser.parse_args(argv))


if __name__ == "__main__":
    main()
