"""An HTTP client on the tailnet: fetch URLs that name tailnet nodes with httpx, through
tsproc.httpx (``pip install 'tsproc[httpx]'``).

    python examples/client.py --control-url URL http://web/ http://web/admin
"""

from __future__ import annotations

import argparse
import os
import sys

import httpx
import trio

import tsproc
import tsproc.httpx


async def fetch(args: argparse.Namespace) -> int:
    async with tsproc.Node(args.hostname, control_url=args.control_url, ephemeral=True,
                           auth_key=os.environ.get("TS_AUTHKEY") or None) as node:
        # One client for every URL: its connections are pooled and kept alive.
        transport = tsproc.httpx.TailnetTransport(node)
        async with httpx.AsyncClient(transport=transport, timeout=30) as client:
            for url in args.urls:
                try:
                    response = await client.get(url)
                except httpx.HTTPError as exc:
                    print(f"GET {url} failed: {exc}", file=sys.stderr)
                    return 1
                print(f"GET {url} -> {response.status_code}")
                print(response.text, end="" if response.text.endswith("\n") else "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fetch URLs over the tailnet with httpx.")
    parser.add_argument("--control-url", metavar="URL",
                        help="the tailnet's control server (default: Tailscale's)")
    parser.add_argument("--hostname", default="client")
    parser.add_argument("urls", nargs="+", metavar="URL")
    return trio.run(fetch, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
