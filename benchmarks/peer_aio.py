"""One side of the asyncio benchmark line: the workloads of peer.py through tsproc.aio.

    python -m benchmarks.peer_aio server [--control URL --hostname H]
    python -m benchmarks.peer_aio client --target IP --bulk-port P --echo-port P --config JSON
                                         [--control URL --hostname H]

The same JSON-lines conversation with benchmarks/run.py as peer.py and gobench, and the same
workloads, written as asyncio code writes them: asyncio streams from ``node.dial`` and
``tsproc.aio.serve``, ``write`` + ``drain``, ``readexactly``. Set beside the trio line, it
shows what the face costs: the node's trio thread, the calls into it, and asyncio's own
streams instead of trio's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from typing import Any

import tsproc.aio

from .peer import SETTLE, TAILNET_BULK_PORT, TAILNET_ECHO_PORT, emit, run_timed_phases

READ_SIZE = 256 * 1024  # the bulk server's read size: as large as the client's chunks

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    pipe = os.fdopen(os.dup(0), "rb", buffering=0)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    return reader


async def start_node(control_url: str, hostname: str) -> tuple[tsproc.aio.Node, float]:
    t0 = time.perf_counter()
    node = tsproc.aio.Node(hostname, control_url=control_url, ephemeral=True)
    await node.__aenter__()
    return node, time.perf_counter() - t0


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


# -- server --

async def serve_bulk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    total = 0
    try:
        while data := await reader.read(READ_SIZE):
            total += len(data)
        writer.write(total.to_bytes(8, "big"))
        await writer.drain()
    except OSError:
        pass
    finally:
        await close(writer)


async def serve_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        await close(writer)


async def run_server(control_url: str, hostname: str) -> None:
    node, took = await start_node(control_url, hostname)
    bulk = await tsproc.aio.serve(serve_bulk, node, TAILNET_BULK_PORT)
    echo = await tsproc.aio.serve(serve_echo, node, TAILNET_ECHO_PORT)
    emit({"event": "ready", "pid": os.getpid(), "startup_s": took,
          "helper_pid": node.helper_pid, "target": str(node.tailscale_ips[0]),
          "bulk_port": TAILNET_BULK_PORT, "echo_port": TAILNET_ECHO_PORT})
    stdin = await stdin_reader()
    while await stdin.read(4096):
        pass
    for server in (bulk, echo):
        server.close()
        await server.wait_closed()
    await node.aclose()


# -- client --

class Client:
    def __init__(self, node: tsproc.aio.Node, target: str, bulk_port: int, echo_port: int,
                 cfg: dict[str, Any], stdin: asyncio.StreamReader) -> None:
        self.node = node
        self.target = target
        self.bulk_port = bulk_port
        self.echo_port = echo_port
        self.cfg = cfg
        self.stdin = stdin

    async def mark(self, name: str) -> None:
        emit({"event": "mark", "name": name})
        await self.stdin.readline()

    async def peer(self) -> tuple[bool, str, str]:
        for peer in (await self.node.status()).peers:
            if self.target in {str(a) for a in peer.tailscale_ips}:
                return True, peer.relay, peer.endpoint
        return False, "", ""

    async def path(self) -> dict[str, Any]:
        _, relay, cur = await self.peer()
        return {"relay": relay, "cur_addr": cur, "direct": bool(cur)}

    async def warm_up(self) -> dict[str, Any]:
        async with asyncio.timeout(30):
            while True:
                found, relay, _ = await self.peer()
                if found and relay:
                    break
                await asyncio.sleep(0.02)
        reader, writer = await self.node.dial(self.target, self.echo_port)
        direct_by = time.monotonic() + self.cfg["direct_wait"]
        msg = bytes(64)
        while True:
            writer.write(msg)
            await reader.readexactly(len(msg))
            _, _, cur = await self.peer()
            if not self.cfg["want_direct"] or cur or time.monotonic() > direct_by:
                break
            await asyncio.sleep(0.05)
        await close(writer)
        return await self.path()

    async def bulk(self, streams: int) -> tuple[int, float]:
        conns = [await self.node.dial(self.target, self.bulk_port) for _ in range(streams)]
        chunk = bytes(self.cfg["chunk_size"])
        t0 = time.perf_counter()
        end = t0 + self.cfg["bulk_seconds"]

        async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
            while time.perf_counter() < end:
                writer.write(chunk)
                await writer.drain()
            writer.write_eof()
            count = int.from_bytes(await reader.readexactly(8), "big")
            await close(writer)
            return count

        counts = await asyncio.gather(*(one(r, w) for r, w in conns))
        return sum(counts), time.perf_counter() - t0

    async def round_trips(self) -> list[float]:
        reader, writer = await self.node.dial(self.target, self.echo_port)
        size = self.cfg["rr_size"]
        msg = bytes(size)
        samples: list[float] = []
        warmup = self.cfg["rr_warmup"]
        for i in range(warmup + self.cfg["rr_count"]):
            t0 = time.perf_counter_ns()
            writer.write(msg)
            await reader.readexactly(size)
            if i >= warmup:
                samples.append((time.perf_counter_ns() - t0) / 1e3)
        await close(writer)
        return samples

    async def setups(self) -> list[float]:
        samples: list[float] = []
        for _ in range(self.cfg["setup_count"]):
            t0 = time.perf_counter_ns()
            reader, writer = await self.node.dial(self.target, self.echo_port)
            writer.write(b"x")
            await reader.readexactly(1)
            await close(writer)
            samples.append((time.perf_counter_ns() - t0) / 1e3)
        return samples

    async def open_idle(self) -> list[Streams]:
        conns: list[Streams] = []
        todo = iter(range(self.cfg["idle_conns"]))

        async def worker() -> None:
            for _ in todo:
                reader, writer = await self.node.dial(self.target, self.echo_port)
                writer.write(b"x")
                await reader.readexactly(1)
                conns.append((reader, writer))

        await asyncio.gather(*(worker() for _ in range(max(1, self.cfg["dial_parallel"]))))
        return conns


async def run_client(args: argparse.Namespace, cfg: dict[str, Any]) -> None:
    node, took = await start_node(args.control, args.hostname)
    emit({"event": "hello", "pid": os.getpid(), "startup_s": took, "helper_pid": node.helper_pid})
    c = Client(node, args.target, args.bulk_port, args.echo_port, cfg, await stdin_reader())
    result: dict[str, Any] = {"event": "result"}
    result["path_before"] = await c.warm_up()
    await c.mark("idle")
    phases = cfg["phases"]
    if "idle" in phases:
        await c.mark("conns_before")
        conns = await c.open_idle()
        await c.mark("conns_open")
        for _, writer in conns:
            await close(writer)
        result["idle_conns"] = len(conns)
        await asyncio.sleep(SETTLE)
    await run_timed_phases(c, phases, cfg, result)
    startups = [took]
    if "startup" in phases:
        for i in range(cfg["startup_repeats"]):
            extra, secs = await start_node(args.control, f"{args.hostname}-s{i}")
            startups.append(secs)
            await extra.aclose()
    result["startup_s"] = startups
    result["path_after"] = await c.path()
    emit(result)
    await node.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peer_aio")
    parser.add_argument("mode", choices=["server", "client"])
    parser.add_argument("--control", default="")
    parser.add_argument("--hostname", default="aiobench")
    parser.add_argument("--target", default="")
    parser.add_argument("--bulk-port", type=int, default=TAILNET_BULK_PORT)
    parser.add_argument("--echo-port", type=int, default=TAILNET_ECHO_PORT)
    parser.add_argument("--config", default="{}")
    args = parser.parse_args()
    try:
        if args.mode == "server":
            asyncio.run(run_server(args.control, args.hostname))
        else:
            asyncio.run(run_client(args, json.loads(args.config)))
    except Exception as exc:
        emit({"event": "error", "error": f"{type(exc).__name__}: {exc}"})
        raise


if __name__ == "__main__":
    main()
