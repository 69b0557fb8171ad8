"""The whole node for blocking code, on a real local tailnet (with certificates and Funnel):
listeners of every kind, UDP both ways, TLS with a verified client (``SSLContext.wrap_socket``
on a tailnet socket), Funnel from a client off the tailnet, cert_pair, logout, an interactive
login while ``wait_running()`` waits, requests and httpx over ``https://``, and the promises on
the new calls (a helper SIGKILL mid-read raises, timeouts and Ctrl-C leak nothing)."""

from __future__ import annotations

import socket
import ssl
import threading

import httpx
import pytest
import requests

import tsproc
import tsproc.blocking
import tsproc.httpx
from tests.faces import Script, Snapshot, check_ctrl_c, kill, kill_mid_read, wait_until

pytestmark = pytest.mark.offline  # the tailnet issues certificates (see tests/test_https.py)

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"


@pytest.fixture(scope="module")
def net():
    with tsproc.blocking.local_tailnet(https=True) as tailnet:
        yield tailnet


@pytest.fixture(scope="module")
def ca_file(net, tmp_path_factory):
    path = tmp_path_factory.mktemp("ca") / "tailnet-ca.pem"
    path.write_text(net.ca_cert)
    return str(path)


def answer_http(sock: socket.socket) -> None:
    """Answers every HTTP/1.1 request on the connection with 'hello', until its end."""
    with sock, sock.makefile("rb") as requests_in:
        try:
            while True:
                line = requests_in.readline()
                if not line:
                    return
                if line == b"\r\n":
                    sock.sendall(RESPONSE)
        except OSError:
            pass


class Serving:
    """Serves a listener with answer_http in threads, until the listener closes."""

    def __init__(self, listener: tsproc.blocking.Listener) -> None:
        self.thread = threading.Thread(target=self._run, args=(listener,), name="serving")
        self.thread.start()

    @staticmethod
    def _run(listener: tsproc.blocking.Listener) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=answer_http, args=(sock,), daemon=True).start()


def test_listen_accept_any_port_and_udp_both_ways(net):
    with net.node("bsrv") as server, net.node("bcli") as client:
        with server.listen(7) as listener:
            sock = client.dial("bsrv", 7, timeout=30)
            accepted, addr = listener.accept(timeout=30)
            with sock, accepted:
                assert addr[0] == str(client.tailscale_ips[0])
                assert server.whois(addr, timeout=10).node.hostname == "bcli"
                sock.sendall(b"ping")
                sock.shutdown(socket.SHUT_WR)
                assert accepted.recv(10) == b"ping"
                assert accepted.recv(10) == b""  # a clean, confirmed EOF
                accepted.sendall(b"pong")
                accepted.close()
                assert sock.recv(10) == b"pong"

        with server.listen_any_port() as any_port:
            sock = client.dial("bsrv", 4242, timeout=30)
            accepted, _ = any_port.accept(timeout=30)
            with sock, accepted:
                assert accepted.getsockname() == (str(server.tailscale_ips[0]), 4242)

        with server.listen_packet(5353) as listening, \
                client.dial_udp("bsrv", 5353, timeout=10) as dialled:
            dialled.send(b"question")
            data, source = listening.recvfrom(timeout=10)
            assert (data, source[0]) == (b"question", str(client.tailscale_ips[0]))
            listening.sendto(b"answer", source)
            assert dialled.recv(timeout=10) == b"answer"
            with client.listen_packet() as back:
                listening.sendto(b"hi", back.local_addr)
                assert back.recvfrom(timeout=10) == (b"hi", listening.local_addr)
            with pytest.raises(tsproc.NodeTimeoutError):
                listening.recvfrom(timeout=0.05)
        assert server.backend_state == "Running"
        assert server.health == ()
        assert server.status(timeout=10).backend_state == "Running"
        assert server.ping("bcli", timeout=10).latency > 0


def test_listen_tls_with_wrap_socket_requests_and_httpx(net, ca_file):
    with net.node("btls") as web, net.node("bvisit") as client:
        domain = net.dns_name(web)
        assert web.cert_domains(timeout=10) == (domain,)
        with web.listen_tls(443) as tls:
            Serving(tls)
            # ssl's own wrap_socket on a tailnet socket, verified against the tailnet's CA.
            raw = client.dial("btls", 443, timeout=30)
            raw.settimeout(30)
            with net.ssl_context().wrap_socket(raw, server_hostname=domain) as sock:
                assert ("DNS", domain) in sock.getpeercert()["subjectAltName"]
                assert sock.getpeername()[0] == str(web.tailscale_ips[0])
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                with sock.makefile("rb") as response:
                    assert response.read(len(RESPONSE)).endswith(b"hello")
            # A context that trusts only the system's CAs refuses it.
            with client.dial("btls", 443, timeout=30) as raw, \
                    pytest.raises(ssl.SSLCertVerificationError):
                ssl.create_default_context().wrap_socket(raw, server_hostname=domain)
            # Anything else that detaches a tailnet socket is still refused.
            with client.dial("btls", 443, timeout=30) as raw, pytest.raises(OSError):
                raw.detach()

            with requests.Session() as session:
                session.mount("https://", tsproc.blocking.requests_adapter(client))
                for _ in range(2):  # the second request reuses the kept-alive connection
                    response = session.get(f"https://{domain}/", verify=ca_file, timeout=30)
                    assert (response.status_code, response.text) == (200, "hello")
                with pytest.raises(requests.exceptions.SSLError):
                    session.get(f"https://{domain}/", timeout=30)  # the system's CAs

            transport = tsproc.httpx.TailnetTransport(client, verify=net.ssl_context())
            with httpx.Client(transport=transport) as http:
                for _ in range(2):
                    response = http.get(f"https://{domain}/")
                    assert (response.status_code, response.text) == (200, "hello")
                with pytest.raises(httpx.ConnectError):
                    http.get("http://no-such-node/")


def test_cert_pair_and_funnel_from_a_client_off_the_tailnet(net, tmp_path):
    with net.node("bfun") as web:
        domain = net.dns_name(web)
        cert, key = web.cert_pair(domain, timeout=60)
        assert cert.startswith(b"-----BEGIN CERTIFICATE-----") and b"PRIVATE KEY" in key
        with pytest.raises(tsproc.TlsUnavailableError):
            web.cert_pair("other.example.com", timeout=30)
        # TLS terminated here with the node's own certificate: wrap_socket on both ends.
        (tmp_path / "cert.pem").write_bytes(cert)
        (tmp_path / "key.pem").write_bytes(key)
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
        with net.node("bfunvisit") as visitor, web.listen(8443) as plain:
            raw = visitor.dial("bfun", 8443, timeout=30)
            raw.settimeout(30)
            accepted, _ = plain.accept(timeout=30)
            accepted.settimeout(30)
            handshake = threading.Thread(
                target=lambda: answer_http(server_context.wrap_socket(accepted, server_side=True)))
            handshake.start()
            with net.ssl_context().wrap_socket(raw, server_hostname=domain) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                data = b""
                while len(data) < len(RESPONSE):
                    data += sock.recv(1024)
                assert data.endswith(b"hello")
            handshake.join(30)
        with web.listen_funnel(443, funnel_only=True) as funnel:
            Serving(funnel)
            host, port = net.funnel_address(web, 443)
            with socket.create_connection((host, port), timeout=30) as raw, \
                    net.ssl_context().wrap_socket(raw, server_hostname=domain) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                data = b""
                while len(data) < len(RESPONSE):
                    data += sock.recv(1024)
                assert data.endswith(b"hello")


def test_logout_leaves_the_tailnet(net):
    with net.node("bleaver") as node:
        node.logout(timeout=30)
        wait_until(lambda: node.status(timeout=10).backend_state != "Running", 10, "logout")


def test_an_interactive_login_completes_while_wait_running_waits():
    with tsproc.blocking.local_tailnet(interactive_login=True) as tailnet, \
            tailnet.node("bwaiter", wait_running=False, up_timeout=None) as node:
        with pytest.raises(tsproc.NodeTimeoutError):
            node.wait_running(timeout=0.2)
        errors: list[BaseException] = []

        def wait() -> None:
            try:
                node.wait_running(timeout=60)
            except BaseException as exc:  # reported below
                errors.append(exc)

        waiter = threading.Thread(target=wait, name="wait_running")
        waiter.start()
        wait_until(lambda: node.auth_url != "", 30, "an auth URL")
        assert waiter.is_alive()
        tailnet.complete_login(node.auth_url)
        waiter.join(60)
        assert not waiter.is_alive() and not errors, errors
        assert node.state is tsproc.NodeState.RUNNING


def test_helper_sigkill_mid_read_of_a_tls_socket_raises(net):
    with net.node("bkilled") as victim, net.node("bfar") as far, \
            far.listen_tls(443) as tls:
        sock = victim.dial("bfar", 443, timeout=30)
        sock.settimeout(60)
        wrapped = net.ssl_context().wrap_socket(sock, server_hostname=net.dns_name(far))
        accepted, _ = tls.accept(timeout=30)
        with wrapped, accepted:
            accepted.sendall(b"first half")
            assert wrapped.recv(10) == b"first half"
            kill_mid_read(victim.helper_pid, wrapped.recv)


def test_timeouts_and_closes_leak_nothing(net):
    with net.node("bleak") as node, net.node("bpeer"):
        with node.listen(7):  # warm: the helper's first listener
            pass
        baseline = Snapshot.take()
        for port in (20, 21, 22):
            with node.listen(port) as listener, pytest.raises(tsproc.NodeTimeoutError):
                listener.accept(timeout=0.01)
        with node.listen_packet() as packets, pytest.raises(tsproc.NodeTimeoutError):
            packets.recv(timeout=0.01)
        with pytest.raises(tsproc.NodeTimeoutError):
            node.dial_udp("bpeer", 53, timeout=1e-6)
        with pytest.raises(tsproc.NodeTimeoutError):
            node.cert_pair(net.dns_name(node), timeout=1e-6)
        wait_until(lambda: not node._runtime.conns, 60, "bridged conns to close")
        baseline.assert_nothing_leaked()


CTRL_C_SCRIPT = """
import sys, tsproc.blocking
with tsproc.blocking.Node("bctrlc2", control_url=sys.argv[1], ephemeral=True) as node:
    print("helper:", node.helper_pid, flush=True)
    with node.listen_any_port() as listener, node.listen_packet(53) as packets:
        print("ready:", flush=True)
        if sys.argv[2] == "accept":
            listener.accept()
        else:
            packets.recvfrom()
"""


@pytest.mark.parametrize("blocked_in", ["accept", "recvfrom"])
def test_ctrl_c_in_accept_or_recvfrom_exits_with_keyboardinterrupt(net, blocked_in):
    check_ctrl_c(Script(CTRL_C_SCRIPT, net.control_url, blocked_in))


def test_a_body_read_to_the_end_of_the_connection_is_never_cut_short_silently(net):
    """A response without a length ends where the connection ends: a helper killed mid-body
    fails the request (requests, httpx.Client), never hands over the part that arrived."""
    # A client node for each library: a restarted helper's first dial can take seconds.
    with net.node("bbody") as server, net.node("breader") as reader1, \
            net.node("breader2") as reader2, server.listen(80) as listener:

        done = threading.Event()

        def partial() -> None:
            sock, _ = listener.accept(timeout=60)
            with sock:
                sock.recv(65536)
                sock.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\npartial")
                done.wait(60)  # hold the connection open, the body unfinished

        for fetch, client in (("requests", reader1), ("httpx", reader2)):
            serving = threading.Thread(target=partial, name="partial body")
            serving.start()
            if fetch == "requests":
                with requests.Session() as session:
                    session.mount("http://", tsproc.blocking.requests_adapter(client))
                    response = session.get("http://bbody/", stream=True, timeout=60)
                    assert response.raw.read(7) == b"partial"
                    kill(client.helper_pid)
                    # requests' name for a body cut short: "Connection broken: …Reset…".
                    with pytest.raises(requests.exceptions.ChunkedEncodingError,
                                       match="ConnectionResetError"):
                        response.content  # noqa: B018 - reads the rest of the body
            else:
                transport = tsproc.httpx.TailnetTransport(client)
                with httpx.Client(transport=transport, timeout=60) as http, \
                        http.stream("GET", "http://bbody/") as response:
                    chunks = response.iter_raw()
                    assert next(chunks) == b"partial"
                    kill(client.helper_pid)
                    with pytest.raises(httpx.ReadError):
                        for _ in chunks:
                            pass
            done.set()
            serving.join(60)
            done.clear()
