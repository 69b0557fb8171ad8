"""A FastAPI app under asyncio on the tailnet, greeting each caller by tailnet identity, served by
hypercorn through tsproc.aio (``pip install 'tsproc[asgi]' fastapi``).

Who is calling comes from the tailnet (WhoIs), not from the request: headers that claim an
identity (``Tailscale-User-Login`` …) are removed before FastAPI sees them.

    python examples/fastapi_greeter.py --local
    python examples/fastapi_greeter.py --control-url URL --hostname greeter
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request

import tsproc.aio
import tsproc.asgi

app = FastAPI(title="greeter")


@app.get("/")
async def greet(request: Request) -> dict[str, Any]:
    who = tsproc.asgi.scope_whois(request.scope)
    assert who is not None  # tsproc.aio.serve_asgi never serves a caller it could not identify
    name = who.user.display_name or who.user.login_name
    return {
        "greeting": f"hello {name}, on {who.node.hostname}",
        "login_name": who.user.login_name,
        "hostname": who.node.hostname,
        "address": request.client.host if request.client else None,
    }


@asynccontextmanager
async def joined_node(args: argparse.Namespace) -> AsyncIterator[tsproc.aio.Node]:
    """An ephemeral node on the tailnet the arguments name, or on a local tailnet of our own."""
    if args.local:
        async with tsproc.aio.local_tailnet() as tailnet:
            print(f"local tailnet: {tailnet.control_url}", flush=True)
            async with tailnet.node(args.hostname) as node:
                yield node
    else:
        async with tsproc.aio.Node(args.hostname, control_url=args.control_url, ephemeral=True,
                                   auth_key=os.environ.get("TS_AUTHKEY") or None) as node:
            yield node


async def serve(args: argparse.Namespace) -> None:
    async with joined_node(args) as node:
        # Ctrl-C or SIGTERM: stop accepting, finish the requests in flight, run the app's
        # lifespan shutdown; then the node logs out.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await tsproc.aio.serve_asgi(
            app, node, args.port, shutdown_trigger=stop.wait,
            on_started=lambda url: print(f"ready: serving {url} ({node.tailscale_ips[0]})",
                                         flush=True),
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A FastAPI app that greets tailnet callers.")
    parser.add_argument("--control-url", metavar="URL",
                        help="the tailnet's control server (default: Tailscale's)")
    parser.add_argument("--local", action="store_true",
                        help="run a local tailnet in this process and print its URL")
    parser.add_argument("--hostname", default="greeter")
    parser.add_argument("--port", type=int, default=80)
    asyncio.run(serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
