"""One side of a Python benchmark line: trio over tsproc, or trio over loopback TCP.

    python -m benchmarks.peer server --net tsproc|tcp|hop [--control URL --hostname H]
    python -m benchmarks.peer client --net tsproc|tcp|hop --target IP --bulk-port P
                                     --echo-port P --config JSON [--control URL --hostname H]

The same JSON-lines conversation with benchmarks/run.py as gobench (see its package comment):
``ready`` (server), ``hello``, ``mark`` (then wait for a line on stdin), ``result``, ``error``.
Every workload mirrors gobench's function of the same name.

``--net hop`` is the "helper hop" line: one helper with no tailnet (TSPROC_HELPER_BENCH=1),
whose ``bench_echo`` connections go through the same bridge and hand-over as a dialled one but
echo inside the helper. Its server does nothing; its client runs the round-trip and set-up
workloads only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import trio

import tsproc
from tsproc._child.helper import HelperProcess, find_helper, helper_environment
from tsproc._core.streams import ConnState, TailnetStream
from tsproc._wire import protocol as proto
from tsproc._wire.rpc import Reply, RpcChannel

TAILNET_BULK_PORT = 5001
TAILNET_ECHO_PORT = 5002
SETTLE = 0.5  # seconds, after closing the idle connections (gobench: settleTime)

Stream = trio.abc.HalfCloseableStream


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class Stdin:
    """Line reader on fd 0 that does not block the trio loop (the helper's heartbeat runs)."""

    def __init__(self) -> None:
        self._stream = trio.lowlevel.FdStream(os.dup(0))
        self._buf = b""

    async def readline(self) -> bytes:
        while b"\n" not in self._buf:
            chunk = await self._stream.receive_some(4096)
            if not chunk:
                raise SystemExit(1)
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    async def wait_eof(self) -> None:
        while await self._stream.receive_some(4096):
            pass


class HopHelper:
    """A helper without a tailnet, for the "helper hop" line: hello, then bench_echo
    connections (see helper/testhook_benchecho.go), with the same conn_end/close_conn
    bookkeeping as a node's generation (tsproc/_core/generation.py)."""

    def __init__(self) -> None:
        self._conns: dict[int, ConnState] = {}
        self.process: HelperProcess | None = None
        self.rpc: RpcChannel | None = None

    @property
    def helper_pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, nursery: trio.Nursery) -> None:
        env = helper_environment({"TSPROC_HELPER_BENCH": "1"})
        self.process = HelperProcess.spawn(find_helper(), ["node", "-tsnet-logs=false"], env)
        self.rpc = RpcChannel(trio.socket.from_stdlib_socket(self.process.control),
                              self._on_notification)
        nursery.start_soon(self.process.watch)
        nursery.start_soon(self.rpc.serve)
        await self.rpc.request("hello", {"protocol": proto.PROTOCOL_VERSION})

    async def close(self) -> None:
        assert self.rpc is not None and self.process is not None
        with contextlib.suppress(tsproc.TsprocError):
            await self.rpc.request("shutdown", {})
        with trio.move_on_after(10):
            await self.process.exited.wait()
        self.process.kill()
        await self.process.exited.wait()
        self.rpc.close()

    def _new_stream(self, reply: Reply) -> TailnetStream:
        # In the reader task, before any conn_end for it is dispatched.
        conn = int(reply.result["conn"])
        assert reply.fd is not None
        state = self._conns[conn] = ConnState(conn, 1)
        fd, reply.fd = reply.fd, None
        return TailnetStream._create(fd, state, reply.result.get("local"),
                                     reply.result.get("remote"), on_close=self._closed)

    def _on_notification(self, msg: proto.Notification) -> None:
        if msg.fd is not None:
            os.close(msg.fd)
        if msg.method == "conn_end":
            state = self._conns.pop(int(msg.params.get("conn", -1)), None)
            if state is not None:
                state.finish(msg.params.get("clean") is True, str(msg.params.get("error", "")))

    def _closed(self, state: ConnState, held: int | None = None, seen: bool = False) -> None:
        # *held*: a reset stream's fd (tsproc/_core/generation.py). The hop never resets; a --base
        # tree older than resets calls this with the state alone, one older than 0.3 without
        # *seen* (the helper tells the close from a half-close itself: no close_conn).
        if held is not None:
            os.close(held)
        assert self.rpc is not None
        if self._conns.pop(state.conn_id, None) is not None and not seen:
            self.rpc.notify_nowait("close_conn", {"conn": state.conn_id})

    async def dial(self) -> TailnetStream:
        assert self.rpc is not None
        return await self.rpc.request("bench_echo", {}, on_result=self._new_stream)


class Net:
    """Where connections come from: a tsproc node, the host's loopback, or a bare helper."""

    def __init__(self, kind: str, control_url: str, memory_profile: str = "default") -> None:
        self.kind = kind
        self.control_url = control_url
        self.memory_profile = memory_profile
        self.node: tsproc.Node | None = None
        self.hop: HopHelper | None = None
        self.nursery: trio.Nursery | None = None  # for the hop line's helper tasks
        # The forward line: one node.forward() per target port, its Unix socket dialled
        # as any program would (the default endpoint of a forward).
        self.forwards: dict[int, tsproc.Forward] = {}
        self.forward_stack = contextlib.AsyncExitStack()

    async def start(self, hostname: str, *, client: bool = False) -> float:
        """Start the node (tsproc only; the hop line's client starts its bare helper);
        returns seconds from Node() to running."""
        if self.kind == "hop" and client:
            assert self.nursery is not None
            self.hop = HopHelper()
            await self.hop.start(self.nursery)
        if self.kind not in ("tsproc", "forward"):
            return 0.0
        self.node, took = await start_node(self.control_url, hostname, self.memory_profile)
        return took

    @property
    def helper_pid(self) -> int | None:
        if self.node is not None:
            return self.node.helper_pid
        return self.hop.helper_pid if self.hop is not None else None

    async def close(self) -> None:
        await self.forward_stack.aclose()
        if self.node is not None:
            await stop_node(self.node)
        if self.hop is not None:
            await self.hop.close()

    async def dial(self, host: str, port: int) -> Stream:
        if self.node is not None and self.kind == "forward":
            fwd = self.forwards.get(port)
            if fwd is None:
                fwd = await self.forward_stack.enter_async_context(self.node.forward(host, port))
                self.forwards[port] = fwd
            assert fwd.path is not None
            return await trio.open_unix_socket(str(fwd.path))
        if self.node is not None:
            return await self.node.dial(host, port)
        if self.hop is not None:
            return await self.hop.dial()
        return await trio.open_tcp_stream(host, port)

    async def listen(self, port: int) -> trio.abc.Listener[Any] | None:
        if self.kind == "hop":
            return None
        if self.node is not None:
            return await self.node.listen(port)
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        return listener

    async def peer(self, ip: str) -> tuple[bool, str, str]:
        """(found, home relay, current direct address) of the peer with address *ip*."""
        if self.node is None:
            return True, "", "loopback" if self.hop is None else "pipe"
        status = await self.node.status()
        for peer in status.peers:
            if ip in {str(a) for a in peer.tailscale_ips}:
                # `cur_addr` before 0.2: a --base tree may be older than the vocabulary.
                endpoint = getattr(peer, "endpoint", None) or getattr(peer, "cur_addr", "")
                return True, peer.relay, endpoint
        return False, "", ""


async def start_node(control_url: str, hostname: str,
                     memory_profile: str = "default") -> tuple[tsproc.Node, float]:
    t0 = time.perf_counter()
    # Only a non-default profile is passed on: a --base tree may predate the argument.
    extra = {} if memory_profile == "default" else {"memory_profile": memory_profile}
    node = tsproc.Node(hostname, control_url=control_url, ephemeral=True, **extra)
    await node.__aenter__()
    return node, time.perf_counter() - t0


async def stop_node(node: tsproc.Node) -> None:
    # __aexit__, not aclose(): entering opened the node's nursery, and only leaving closes it.
    await node.__aexit__(None, None, None)


async def receive_exactly(stream: Stream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = await stream.receive_some(n - len(buf))
        if not data:
            raise trio.BrokenResourceError(f"EOF after {len(buf)} of {n} bytes")
        buf += data
    return bytes(buf)


# -- server --


async def serve_bulk(stream: Stream) -> None:
    total = 0
    try:
        # No max_bytes: the stream's default receive size is part of what is measured.
        while data := await stream.receive_some():
            total += len(data)
        await stream.send_all(total.to_bytes(8, "big"))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


async def serve_echo(stream: Stream) -> None:
    try:
        while data := await stream.receive_some():
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


def _port(listener: trio.abc.Listener[Any] | None) -> int:
    if listener is None:
        return 0
    if isinstance(listener, trio.SocketListener):
        port: int = listener.socket.getsockname()[1]
        return port
    return int(listener.port)  # type: ignore[attr-defined]


async def run_server(net: Net, hostname: str) -> None:
    took = await net.start(hostname)
    bulk = await net.listen(TAILNET_BULK_PORT)
    echo = await net.listen(TAILNET_ECHO_PORT)
    ready: dict[str, Any] = {"event": "ready", "pid": os.getpid(), "startup_s": took}
    if net.node is not None:
        ready["helper_pid"] = net.node.helper_pid
        ready["target"] = str(net.node.tailscale_ips[0])
    else:
        ready["target"] = "127.0.0.1"
    ready["bulk_port"], ready["echo_port"] = _port(bulk), _port(echo)
    async with trio.open_nursery() as nursery:
        for listener, handler in ((bulk, serve_bulk), (echo, serve_echo)):
            if listener is not None:
                nursery.start_soon(trio.serve_listeners, handler, [listener])
        emit(ready)
        await Stdin().wait_eof()
        nursery.cancel_scope.cancel()
    await net.close()


# -- client --


class Client:
    def __init__(self, net: Net, target: str, bulk_port: int, echo_port: int,
                 cfg: dict[str, Any]) -> None:
        self.net = net
        self.target = target
        self.bulk_port = bulk_port
        self.echo_port = echo_port
        self.cfg = cfg
        self.stdin = Stdin()

    async def mark(self, name: str) -> None:
        emit({"event": "mark", "name": name})
        await self.stdin.readline()

    async def path(self) -> dict[str, Any]:
        _, relay, cur = await self.net.peer(self.target)
        return {"relay": relay, "cur_addr": cur, "direct": bool(cur)}

    async def warm_up(self) -> dict[str, Any]:
        with trio.fail_after(30):
            while True:
                found, relay, _ = await self.net.peer(self.target)
                if found and (relay or self.net.node is None):
                    break
                await trio.sleep(0.02)
        stream = await self.net.dial(self.target, self.echo_port)
        direct_by = time.monotonic() + self.cfg["direct_wait"]
        msg = bytes(64)
        while True:
            await stream.send_all(msg)
            await receive_exactly(stream, len(msg))
            _, _, cur = await self.net.peer(self.target)
            if not self.cfg["want_direct"] or cur or time.monotonic() > direct_by:
                break
            await trio.sleep(0.05)
        await stream.aclose()
        return await self.path()

    async def bulk(self, streams: int) -> tuple[int, float]:
        conns = [await self.net.dial(self.target, self.bulk_port) for _ in range(streams)]
        chunk = bytes(self.cfg["chunk_size"])
        total = 0
        t0 = time.perf_counter()
        end = t0 + self.cfg["bulk_seconds"]

        async def one(stream: Stream) -> None:
            nonlocal total
            while time.perf_counter() < end:
                await stream.send_all(chunk)
            await stream.send_eof()
            # Not `total += await …`: that reads total before the await and loses the other
            # streams' counts.
            count = int.from_bytes(await receive_exactly(stream, 8), "big")
            total += count
            await stream.aclose()

        async with trio.open_nursery() as nursery:
            for stream in conns:
                nursery.start_soon(one, stream)
        return total, time.perf_counter() - t0

    async def round_trips(self) -> list[float]:
        stream = await self.net.dial(self.target, self.echo_port)
        size = self.cfg["rr_size"]
        msg = bytes(size)
        samples: list[float] = []
        warmup = self.cfg["rr_warmup"]
        for i in range(warmup + self.cfg["rr_count"]):
            t0 = time.perf_counter_ns()
            await stream.send_all(msg)
            got = 0
            while got < size:
                data = await stream.receive_some(size - got)
                if not data:
                    raise trio.BrokenResourceError("EOF in a round trip")
                got += len(data)
            if i >= warmup:
                samples.append((time.perf_counter_ns() - t0) / 1e3)
        await stream.aclose()
        return samples

    async def setups(self) -> list[float]:
        samples: list[float] = []
        for _ in range(self.cfg["setup_count"]):
            t0 = time.perf_counter_ns()
            stream = await self.net.dial(self.target, self.echo_port)
            await stream.send_all(b"x")
            await receive_exactly(stream, 1)
            await stream.aclose()
            samples.append((time.perf_counter_ns() - t0) / 1e3)
        return samples

    async def open_idle(self) -> list[Stream]:
        conns: list[Stream] = []
        todo = iter(range(self.cfg["idle_conns"]))

        async def worker() -> None:
            for _ in todo:
                stream = await self.net.dial(self.target, self.echo_port)
                await stream.send_all(b"x")
                await receive_exactly(stream, 1)
                conns.append(stream)

        async with trio.open_nursery() as nursery:
            for _ in range(max(1, self.cfg["dial_parallel"])):
                nursery.start_soon(worker)
        return conns


class PhaseClient(Protocol):
    """What :func:`run_timed_phases` asks of a client (peer.py's and peer_aio.py's)."""

    async def mark(self, name: str) -> None: ...
    async def bulk(self, streams: int) -> tuple[int, float]: ...
    async def round_trips(self) -> list[float]: ...
    async def setups(self) -> list[float]: ...


async def run_timed_phases(c: PhaseClient, phases: Sequence[str], cfg: dict[str, Any],
                           result: dict[str, Any]) -> None:
    """The bulk, round-trip and set-up phases, between their marks, into *result*: the same
    for every Python line, whichever loop runs it."""
    for streams in (1, cfg["bulk_streams"]) if "bulk" in phases else ():
        name = f"bulk{streams}"
        await c.mark(f"{name}_start")
        moved, secs = await c.bulk(streams)
        await c.mark(f"{name}_end")
        result[name] = {"bytes": moved, "seconds": secs, "streams": streams}
    if "rr" in phases:
        await c.mark("rr_start")
        result["rr_us"] = await c.round_trips()
        await c.mark("rr_end")
    if "setup" in phases:
        await c.mark("setup_start")
        result["setup_us"] = await c.setups()
        await c.mark("setup_end")


async def run_client(net: Net, hostname: str, target: str, bulk_port: int, echo_port: int,
                     cfg: dict[str, Any]) -> None:
    took = await net.start(hostname, client=True)
    hello: dict[str, Any] = {"event": "hello", "pid": os.getpid(), "startup_s": took}
    if net.helper_pid is not None:
        hello["helper_pid"] = net.helper_pid
    emit(hello)
    c = Client(net, target, bulk_port, echo_port, cfg)
    result: dict[str, Any] = {"event": "result"}
    result["path_before"] = await c.warm_up()
    await c.mark("idle")

    phases = cfg["phases"]
    if net.hop is not None:  # no tailnet behind it: only what one connection costs
        phases = [p for p in phases if p in ("rr", "setup")]
    # Idle connections first, on fresh processes: after bulk the heaps have room to spare, and
    # the growth of RSS would say little.
    if "idle" in phases:
        await c.mark("conns_before")
        conns = await c.open_idle()
        await c.mark("conns_open")
        for stream in conns:
            await stream.aclose()
        result["idle_conns"] = len(conns)
        await trio.sleep(SETTLE)  # let the teardown of 1,000 connections finish

    await run_timed_phases(c, phases, cfg, result)

    startups = [took]
    if net.node is not None and "startup" in phases:
        for i in range(cfg["startup_repeats"]):
            node, secs = await start_node(net.control_url, f"{hostname}-s{i}", net.memory_profile)
            startups.append(secs)
            await stop_node(node)
    result["startup_s"] = startups
    result["path_after"] = await c.path()
    emit(result)
    await net.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peer")
    parser.add_argument("mode", choices=["server", "client"])
    parser.add_argument("--net", choices=["tsproc", "tcp", "hop", "forward"], default="tsproc")
    parser.add_argument("--control", default="")
    parser.add_argument("--hostname", default="pybench")
    parser.add_argument("--target", default="")
    parser.add_argument("--bulk-port", type=int, default=TAILNET_BULK_PORT)
    parser.add_argument("--echo-port", type=int, default=TAILNET_ECHO_PORT)
    parser.add_argument("--config", default="{}")
    parser.add_argument("--memory-profile", default="default")
    args = parser.parse_args()
    net = Net(args.net, args.control, args.memory_profile)
    entry: Callable[[], Awaitable[None]]
    if args.mode == "server":
        async def entry() -> None:
            await run_server(net, args.hostname)
    else:
        cfg = json.loads(args.config)

        async def entry() -> None:
            async with trio.open_nursery() as nursery:
                net.nursery = nursery
                await run_client(net, args.hostname, args.target, args.bulk_port,
                                 args.echo_port, cfg)
                nursery.cancel_scope.cancel()
    try:
        trio.run(entry)
    except Exception as exc:
        emit({"event": "error", "error": f"{type(exc).__name__}: {exc}"})
        raise


if __name__ == "__main__":
    main()
