"""An asyncio program on the tailnet: fetch URLs that name tailnet nodes with httpx, all at
once, through tsproc.aio and tsproc.httpx (``pip install 'tsproc[httpx]'``).

    python examples/httpx_asyncio_client.py --control-url URL http://greeter/ http://web/
    python examples/httpx_asyncio_client.py --ca tailnet-ca.pem https://web.tailnet.test/

``--ca`` trusts a CA file for ``https://`` (a local tailnet's ``ca_cert``) instead of the
system's; ``--http2`` offers HTTP/2 (``pip install 'httpx[http2]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys

import httpx

import tsproc.aio
import tsproc.httpx


async def get(client: httpx.AsyncClient, url: str) -> str:
    try:
        response = await client.get(url)
    except httpx.HTTPError as exc:
        raise SystemExit(f"GET {url} failed: {exc!r}") from None
    text = response.text if response.text.endswith("\n") else response.text + "\n"
    return f"GET {url} -> {response.status_code} ({response.http_version})\n{text}"


async def fetch(args: argparse.Namespace) -> int:
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=args.ca) if args.ca else True
    async with tsproc.aio.Node(args.hostname, control_url=args.control_url, ephemeral=True,
                               auth_key=os.environ.get("TS_AUTHKEY") or None) as node:
        # One client for every URL: its connections are pooled and kept alive.
        transport = tsproc.httpx.TailnetTransport(node, verify=verify, http2=args.http2)
        async with httpx.AsyncClient(transport=transport, timeout=30) as client:
            # Concurrently, as asyncio code does: each request is a task of this loop.
            for page in await asyncio.gather(*(get(client, url) for url in args.urls)):
                print(page, end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fetch URLs over the tailnet with httpx, "
                                     "under asyncio.")
    parser.add_argument("--control-url", metavar="URL",
                        help="the tailnet's control server (default: Tailscale's)")
    parser.add_argument("--hostname", default="fetcher")
    parser.add_argument("--ca", metavar="FILE", help="trust this CA file for https://")
    parser.add_argument("--http2", action="store_true", help="offer HTTP/2")
    parser.add_argument("urls", nargs="+", metavar="URL")
    return asyncio.run(fetch(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
