"""The faces have the whole node: every public name of :class:`tsproc.Node` exists on
:class:`tsproc.aio.Node` (a coroutine where the trio node's is) and on
:class:`tsproc.blocking.Node` (a plain call), unless listed below with the reason. A name the
trio node grows fails this test until the faces have it too, or the list says why not.

And an object of the wrong face handed to an integration fails at once, with a TypeError that
names the class it needs and what to use instead."""

from __future__ import annotations

import asyncio
import inspect

import pytest
import trio

import tsproc
import tsproc.aio
import tsproc.aiohttp
import tsproc.asgi
import tsproc.blocking
import tsproc.httpx
import tsproc.websocket

# Names of tsproc.Node a face does not have, each with the reason. Keep it short.
NOT_ON_AIO: dict[str, str] = {}
NOT_ON_BLOCKING = {
    # Blocking code closes with close() (and `with`), as sockets and files do; an `aclose`
    # coroutine would be of no use to it.
    "aclose": "close",
}


def public_names(obj: object) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


def trio_node_names() -> set[str]:
    # An instance, not the class: hostname, control_url and ephemeral are instance attributes.
    return public_names(tsproc.Node("parity", control_url="http://127.0.0.1:9"))


def test_every_name_of_the_trio_node_is_on_the_asyncio_node():
    missing = sorted(trio_node_names() - public_names(tsproc.aio.Node) - set(NOT_ON_AIO))
    assert not missing, f"tsproc.aio.Node lacks {missing}"


def test_every_name_of_the_trio_node_is_on_the_blocking_node():
    missing = sorted(trio_node_names() - public_names(tsproc.blocking.Node)
                     - set(NOT_ON_BLOCKING))
    assert not missing, f"tsproc.blocking.Node lacks {missing}"
    for replacement in NOT_ON_BLOCKING.values():
        assert hasattr(tsproc.blocking.Node, replacement)


def test_the_exception_lists_name_only_what_the_trio_node_has():
    # A stale entry would let a later gap through unnoticed.
    names = trio_node_names()
    assert set(NOT_ON_AIO) <= names
    assert set(NOT_ON_BLOCKING) <= names


@pytest.mark.parametrize("name", sorted(trio_node_names()))
def test_each_name_has_the_shape_of_its_face(name):
    trio_attr = inspect.getattr_static(tsproc.Node, name, None)
    if trio_attr is None:  # an instance attribute: the faces give it as a property
        for face in (tsproc.aio.Node, tsproc.blocking.Node):
            assert isinstance(inspect.getattr_static(face, name), property), (face, name)
        return
    if isinstance(trio_attr, property):
        for face in (tsproc.aio.Node, tsproc.blocking.Node):
            assert isinstance(inspect.getattr_static(face, name), property), (face, name)
        return
    is_async = inspect.iscoroutinefunction(trio_attr)
    aio_attr = getattr(tsproc.aio.Node, name, None)
    if aio_attr is not None and is_async:
        assert inspect.iscoroutinefunction(aio_attr), f"tsproc.aio.Node.{name} is not async"
    blocking_attr = getattr(tsproc.blocking.Node, name, None)
    if blocking_attr is not None:
        assert callable(blocking_attr)
        assert not inspect.iscoroutinefunction(blocking_attr), (
            f"tsproc.blocking.Node.{name} is a coroutine")


def test_blocking_calls_that_wait_on_the_helper_take_a_timeout():
    for name in ("wait_running", "dial", "dial_udp", "whois", "status", "ping", "cert_domains",
                 "cert_pair", "logout"):
        params = inspect.signature(getattr(tsproc.blocking.Node, name)).parameters
        assert "timeout" in params, name


# -- a node of the wrong face --

def nodes():
    return {
        "trio": tsproc.Node("wrongface"),
        "asyncio": tsproc.aio.Node("wrongface"),
        "blocking": tsproc.blocking.Node("wrongface"),
    }


def test_serve_tcp_asgi_and_websocket_refuse_a_face_node_naming_the_right_call():
    async def handler(stream):  # pragma: no cover - never called
        pass

    async def main() -> None:
        with pytest.raises(TypeError, match=r"needs a tsproc\.Node, got a tsproc\.aio\.Node; "
                                            r"use tsproc\.aio\.serve$"):
            await tsproc.serve_tcp(handler, nodes()["asyncio"], 80)
        with pytest.raises(TypeError, match=r"got a tsproc\.blocking\.Node; use "
                                            r"tsproc\.blocking\.TailnetServer"):
            await tsproc.serve_tcp(handler, nodes()["blocking"], 80)
        with pytest.raises(TypeError, match=r"use tsproc\.aio\.serve_asgi"):
            await tsproc.asgi.serve(handler, nodes()["asyncio"], 80)
        with pytest.raises(TypeError, match=r"tsproc\.websocket\.open_websocket needs a "
                                            r"tsproc\.Node, got a tsproc\.aio\.Node"):
            async with tsproc.websocket.open_websocket(nodes()["asyncio"], "h", 80, "/"):
                pass

    trio.run(main)


def test_asyncio_apis_refuse_a_trio_or_blocking_node():
    async def main() -> None:
        with pytest.raises(TypeError, match=r"tsproc\.aio\.serve needs a tsproc\.aio\.Node, "
                                            r"got a tsproc\.Node; use tsproc\.serve_tcp"):
            await tsproc.aio.serve(lambda r, w: None, nodes()["trio"], 80)
        with pytest.raises(TypeError, match=r"got a tsproc\.Node; use tsproc\.asgi\.serve"):
            await tsproc.aio.serve_asgi(lambda *a: None, nodes()["trio"], 80)
        with pytest.raises(TypeError, match=r"TailnetConnector needs a tsproc\.aio\.Node, got "
                                            r"a tsproc\.blocking\.Node; use "
                                            r"tsproc\.blocking\.requests_adapter"):
            tsproc.aiohttp.TailnetConnector(nodes()["blocking"])

    asyncio.run(main())


def test_blocking_apis_refuse_an_async_node():
    with pytest.raises(TypeError, match=r"pool_manager needs a tsproc\.blocking\.Node, got a "
                                        r"tsproc\.aio\.Node; use tsproc\.httpx\.TailnetTransport"):
        tsproc.blocking.requests_adapter(nodes()["asyncio"])
    with pytest.raises(TypeError, match=r"needs a tsproc\.blocking\.Node, got a tsproc\.Node"):
        tsproc.blocking.TailnetServer(nodes()["trio"], 80, object)  # type: ignore[arg-type]


def test_httpx_transport_takes_every_face_and_names_the_right_client():
    import httpx  # noqa: PLC0415

    with pytest.raises(TypeError, match=r"TailnetTransport needs a tsproc\.Node or "
                                        r"tsproc\.aio\.Node or tsproc\.blocking\.Node, got a "
                                        r"builtins\.str"):
        tsproc.httpx.TailnetTransport("web")
    with httpx.Client(transport=tsproc.httpx.TailnetTransport(nodes()["asyncio"])) as client, \
            pytest.raises(TypeError, match=r"tsproc\.aio\.Node is for httpx\.AsyncClient"):
        client.get("http://web/")

    async def main() -> None:
        transport = tsproc.httpx.TailnetTransport(nodes()["blocking"])
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(TypeError, match=r"blocking\.Node is for httpx\.Client"):
                await client.get("http://web/")

    asyncio.run(main())
    with pytest.raises(TypeError, match=r"TailnetNetworkBackend needs a tsproc\.Node, got a "
                                        r"tsproc\.aio\.Node; use tsproc\.httpx\.TailnetTransport"):
        tsproc.httpx.TailnetNetworkBackend(nodes()["asyncio"])
