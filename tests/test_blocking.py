"""tsproc.blocking on a real local tailnet: sockets, socketserver, requests, and the promises
(honest EOF after a helper SIGKILL, nothing leaked on close, Ctrl-C)."""

from __future__ import annotations

import http.server
import ipaddress
import json
import socket
import socketserver
import ssl
import threading
from functools import partial

import pytest
import requests

import tsproc
import tsproc.blocking
from tests.faces import Script, Snapshot, check_ctrl_c, kill, kill_mid_read, wait_until


@pytest.fixture(scope="module")
def net():
    with tsproc.blocking.local_tailnet() as tailnet:
        yield tailnet


@pytest.fixture(scope="module")
def pair(net):
    """A server node and a client node, shared by the tests that leave both as they were."""
    with net.node("bserver") as server, net.node("bclient") as client:
        yield server, client


class Echo(socketserver.StreamRequestHandler):
    """Greets the caller by tailnet identity, then echoes until the caller's EOF."""

    def handle(self) -> None:
        who = self.server.node.whois(self.client_address)
        self.wfile.write(f"hello {who.node.hostname}\n".encode())
        while data := self.request.recv(65536):
            self.request.sendall(data)


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_dial_serve_whois_status_and_half_close(pair):
    server, client = pair
    with tsproc.blocking.ThreadingTailnetServer(server, 7, Echo) as tcp:
        serving = threading.Thread(target=tcp.serve_forever, name="echo serve_forever")
        serving.start()
        try:
            sock = client.dial("bserver", 7, timeout=60)
            with sock:
                assert isinstance(sock, socket.socket)
                assert sock.getpeername()[1] == 7
                assert sock.getpeername()[0] in {str(ip) for ip in server.tailscale_ips}
                sock.sendall(b"ping over the tailnet")
                sock.shutdown(socket.SHUT_WR)  # half-close: the echo still comes back
                assert read_all(sock) == b"hello bclient\nping over the tailnet"
                assert sock.recv(10) == b""  # EOF stays EOF
            status = client.status()
            assert status.backend_state == "Running"
            assert any(peer.hostname == "bserver" for peer in status.peers)
            who = server.whois(str(client.tailscale_ips[0]))
            assert who.node.hostname == "bclient"
        finally:
            tcp.shutdown()
            serving.join()


def test_requests_through_the_adapter_and_http_server(pair):
    server, client = pair

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            who = self.server.node.whois(self.client_address)
            body = json.dumps({"path": self.path, "hostname": who.node.hostname,
                               "forged": self.headers.get("X-Anything")}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with tsproc.blocking.ThreadingTailnetServer(server, 8080, Hello) as httpd:
        serving = threading.Thread(target=httpd.serve_forever, name="http serve_forever")
        serving.start()
        try:
            with requests.Session() as session:
                # Both schemes mounted: nothing here may fall back to system DNS and the LAN.
                session.mount("http://", tsproc.blocking.requests_adapter(client))
                session.mount("https://", tsproc.blocking.requests_adapter(client))
                for path in ("/a", "/b"):  # the second request reuses the kept-alive connection
                    response = session.get(f"http://bserver:8080{path}", timeout=60)
                    assert response.status_code == 200
                    assert response.json() == {"path": path, "hostname": "bclient",
                                               "forged": None}
                with pytest.raises(requests.ConnectionError):
                    session.get("http://no-such-node:8080/", timeout=60)
                # https:// runs TLS over the tailnet (tests/test_blocking_surface.py); this
                # server speaks plain HTTP, so the handshake fails, and says so.
                with pytest.raises(requests.exceptions.SSLError):
                    session.get("https://bserver:8080/", timeout=60)
        finally:
            httpd.shutdown()
            serving.join()


def test_listener_accept_timeout_and_dial_errors(pair):
    server, client = pair
    with server.listen(9) as listener:
        with pytest.raises(TimeoutError):
            listener.accept(timeout=0.2)
        sock = client.dial("bserver", 9, timeout=60)
        accepted, addr = listener.accept(timeout=60)
        with sock, accepted:
            assert addr == accepted.getpeername()
            assert addr[0] == str(client.tailscale_ips[0])
            accepted.sendall(b"x")
            assert sock.recv(1) == b"x"
        with pytest.raises(tsproc.AddressInUseError):
            server.listen(9)
    with pytest.raises(OSError):
        listener.accept(timeout=1)
    with pytest.raises(tsproc.DialError):
        client.dial("no-such-node", 9, timeout=60)
    with pytest.raises(tsproc.InvalidArgumentError):
        client.dial("bserver", 9, timeout=-1)
    with pytest.raises(tsproc.NodeTimeoutError, match="no connection to bserver:9 within"):
        client.dial("bserver", 9, timeout=1e-6)  # a trio cancel scope that has already expired


def test_helper_sigkill_mid_read_raises_not_eof(net):
    with net.node("bsource") as source, net.node("bvictim") as victim, \
            source.listen(7) as listener, victim.events() as events:
        sock = victim.dial("bsource", 7, timeout=60)
        peer, _ = listener.accept(timeout=60)
        with sock, peer:
            peer.sendall(b"first half")
            assert sock.recv(100) == b"first half"
            kill_mid_read(victim.helper_pid, sock.recv)
        # The node comes back by itself, and says so.
        for event in events:
            if isinstance(event, tsproc.HelperRestartedEvent):
                break
        wait_until(lambda: victim.state is tsproc.NodeState.RUNNING, 60, "restart")
        # Through makefile (http.client's path) too, on a connection through the new helper.
        sock2 = victim.dial("bsource", 7, timeout=60)
        peer2, _ = listener.accept(timeout=60)
        with sock2, peer2, sock2.makefile("rb") as reader:
            peer2.sendall(b"line\n")
            assert reader.readline() == b"line\n"
            kill(victim.helper_pid)
            with pytest.raises(ConnectionResetError):
                reader.read()


def test_node_close_leaves_no_thread_fd_or_process(net):
    before = Snapshot.take()
    # `node` is left first: its sockets end while their peer is still there.
    with net.node("bother") as other, other.listen(7) as listener, \
            net.node("bclosing") as node:
        sock = node.dial("bother", 7, timeout=60)
        accepted, _ = listener.accept(timeout=60)
        try:
            accepted.sendall(b"bye")
            assert sock.recv(3) == b"bye"
            assert "tsproc node bclosing" in {t.name for t in threading.enumerate()}
        except BaseException:
            sock.close()
            accepted.close()
            raise
    try:
        # A socket the user kept open past its node's close reads the end as an error.
        with pytest.raises(ConnectionResetError):
            sock.recv(3)
    finally:
        sock.close()
        accepted.close()
    before.assert_nothing_leaked()


CTRL_C_SCRIPT = """
import sys, tsproc.blocking
with tsproc.blocking.Node("bctrlc", control_url=sys.argv[1], ephemeral=True) as node:
    print("helper:", node.helper_pid, flush=True)
    with node.listen(7) as listener, node.events() as events:
        print("ready:", flush=True)
        if sys.argv[2] == "accept":
            listener.accept()       # a select() on the listener's wake-up socket
        elif sys.argv[2] == "events":
            next(events)            # a wait for the trio thread's answer
        else:
            sock = node.dial("bctrlc", 7, timeout=30)
            sock.recv(1)            # a plain recv(2) on the connection
"""


@pytest.mark.parametrize("blocked_in", ["accept", "events", "recv"])
def test_ctrl_c_while_blocked_exits_with_keyboardinterrupt(net, blocked_in):
    check_ctrl_c(Script(CTRL_C_SCRIPT, net.control_url, blocked_in))


def tls_client(sock: socket.socket, context: ssl.SSLContext, server_hostname: str):
    """TLS over a tailnet socket through memory BIOs (``wrap_socket`` works too, see
    tests/test_blocking_surface.py): an SSLObject and a function that runs one of its calls,
    moving bytes through *sock*."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)

    def run(op):
        while True:
            try:
                result = op()
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    sock.sendall(outgoing.read())
                data = sock.recv(65536)
                assert data, "the connection closed during TLS"
                incoming.write(data)
                continue
            if outgoing.pending:
                sock.sendall(outgoing.read())
            return result

    return tls, run


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


@pytest.mark.offline
def test_https_tailnet_tls_handshake_to_listen_tls():
    with tsproc.blocking.local_tailnet(https=True) as tailnet:
        assert tailnet.https
        assert tailnet.ca_cert.startswith("-----BEGIN CERTIFICATE-----")
        with tailnet.node("bweb") as web, tailnet.node("bclient") as client:
            host, port = tailnet.funnel_address(web)
            assert ipaddress.ip_address(host).is_loopback and port > 0
            domain = tailnet.dns_name(web)
            assert domain == "bweb.tailnet.test"
            with web.listen_tls(443) as listener:
                errors: list[BaseException] = []

                def serve_one() -> None:
                    try:
                        sock, _ = listener.accept(timeout=120)
                        with sock:  # plaintext: the helper terminates TLS
                            sock.sendall(recv_exactly(sock, 5).upper())
                    except BaseException as exc:  # reported below
                        errors.append(exc)

                serving = threading.Thread(target=serve_one, name="listen_tls server")
                serving.start()
                try:
                    with client.dial("bweb", 443, timeout=60) as sock:
                        sock.settimeout(60)  # the first handshake waits for the certificate
                        tls, run = tls_client(sock, tailnet.ssl_context(), domain)
                        run(tls.do_handshake)
                        assert ("DNS", domain) in tls.getpeercert()["subjectAltName"]
                        run(lambda: tls.write(b"hello"))
                        got = b""
                        while len(got) < 5:
                            got += run(partial(tls.read, 5 - len(got)))
                        assert got == b"HELLO"
                finally:
                    serving.join(120)
                assert not errors, errors
