"""A plain blocking script on the tailnet: fetch URLs that name tailnet nodes with requests,
through tsproc.blocking (``pip install requests``). No asyncio, no trio in sight.

    python examples/requests_client.py --control-url URL http://greeter/
"""

from __future__ import annotations

import argparse
import os
import sys

import requests

import tsproc.blocking


def fetch(args: argparse.Namespace) -> int:
    with tsproc.blocking.Node(args.hostname, control_url=args.control_url, ephemeral=True,
                              auth_key=os.environ.get("TS_AUTHKEY") or None) as node, \
            requests.Session() as session:
        # One session for every URL: its connections are pooled and kept alive.
        session.mount("http://", tsproc.blocking.requests_adapter(node))
        for url in args.urls:
            try:
                response = session.get(url, timeout=30)
            except requests.RequestException as exc:
                print(f"GET {url} failed: {exc}", file=sys.stderr)
                return 1
            print(f"GET {url} -> {response.status_code}")
            print(response.text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fetch URLs over the tailnet with requests.")
    parser.add_argument("--control-url", metavar="URL",
                        help="the tailnet's control server (default: Tailscale's)")
    parser.add_argument("--hostname", default="fetcher")
    parser.add_argument("urls", nargs="+", metavar="URL")
    return fetch(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
