"""An HTTP service on the tailnet with identity-based access, served by hypercorn through
tsproc.asgi (``pip install 'tsproc[asgi]'``).

Everyone on the tailnet may see ``/`` and ``/whoami``; only the logins given with
``--allow-login`` and nodes with a tag given with ``--allow-tag`` may see ``/admin``. Who is
asking comes from the tailnet (WhoIs), and request headers that claim an identity
(``Tailscale-User-Login`` …) are removed before the app sees them, so it cannot be forged.

    python examples/http_service.py --local --allow-login you@example.com
    python examples/http_service.py --control-url URL --allow-tag tag:admin
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio

import tsproc
import tsproc.asgi
from tsproc.testing import local_tailnet


class App:
    """A plain ASGI app; with a framework, read the same scope extension (Starlette:
    ``request.scope["extensions"]["tsproc.whois"]``)."""

    def __init__(self, allow_logins: set[str], allow_tags: set[str]) -> None:
        self.allow_logins = allow_logins
        self.allow_tags = allow_tags

    def may_see_admin(self, identity: dict[str, Any]) -> bool:
        return (identity["login_name"] in self.allow_logins
                or bool(self.allow_tags.intersection(identity["tags"])))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        identity = scope["extensions"][tsproc.asgi.WHOIS_EXTENSION]
        path = scope["path"]
        if path == "/":
            status, body = 200, (f"hello {identity['display_name']} ({identity['login_name']}) "
                                 f"on {identity['hostname']}\n")
        elif path == "/whoami":
            public = {k: v for k, v in identity.items() if k != "whois"}
            status, body = 200, json.dumps(public, indent=2) + "\n"
        elif path == "/admin":
            if self.may_see_admin(identity):
                status, body = 200, f"welcome to the admin page, {identity['login_name']}\n"
            else:
                status, body = 403, f"{identity['login_name']} may not see this page\n"
        else:
            status, body = 404, "not found\n"
        data = body.encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})


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


async def stop_on_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            stop.set()
            return


async def serve(args: argparse.Namespace) -> None:
    app = App(set(args.allow_login), set(args.allow_tag))
    async with joined_node(args) as node, trio.open_nursery() as nursery:
        # Ctrl-C: stop accepting, finish the requests in flight, run the app's lifespan
        # shutdown; then the node logs out.
        stop = trio.Event()
        nursery.start_soon(stop_on_signal, stop)
        url = await nursery.start(
            partial(tsproc.asgi.serve, app, node, args.port, shutdown_trigger=stop.wait))
        print(f"ready: serving {url} ({node.tailscale_ips[0]})", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="An HTTP service with identity-based access.")
    parser.add_argument("--control-url", metavar="URL",
                        help="the tailnet's control server (default: Tailscale's)")
    parser.add_argument("--local", action="store_true",
                        help="run a local tailnet in this process and print its URL")
    parser.add_argument("--hostname", default="web")
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--allow-login", action="append", default=[], metavar="LOGIN",
                        help="a login name that may see /admin (repeatable)")
    parser.add_argument("--allow-tag", action="append", default=[], metavar="TAG",
                        help="a node tag that may see /admin, e.g. tag:admin (repeatable)")
    trio.run(serve, parser.parse_args(argv))


if __name__ == "__main__":
    main()
