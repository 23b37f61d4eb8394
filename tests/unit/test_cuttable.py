"""Cutting a notification POST past its deadline: the paths where it used to miss or misfire."""

import select
import socket
import ssl
import subprocess
import threading
import time

import pytest

from tests.unit.test_notify import Trickler, store  # noqa: F401 (fixture)
from trigger_server import cuttable
from trigger_server.notify import Notifier


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    where = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(where / "key.pem"), "-out", str(where / "cert.pem"),
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    return str(where / "cert.pem"), str(where / "key.pem")


def _tls(cert):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert)
    return context


def _serve(listener, handle):
    def accept():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()


def _head(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_an_https_receiver_through_an_https_proxy_is_cut(store, cert, monkeypatch):  # noqa: F811
    """HTTPS_PROXY=https://...: urllib3 wraps TLS in TLS, and the connection's sock is an
    SSLTransport, which socket.socket.shutdown does not take (TypeError out of post())."""
    cut = threading.Event()

    def trickle(conn):  # an https receiver that answers a byte at a time
        try:
            conn = _tls(cert).wrap_socket(conn, server_side=True)
            _head(conn)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 1000:
                time.sleep(0.05)
                conn.sendall(bytes([byte]))
        except OSError:
            cut.set()

    def proxy(conn):  # a TLS proxy that tunnels CONNECT
        try:
            conn = _tls(cert).wrap_socket(conn, server_side=True)
            host, port = _head(conn).split(b" ")[1].decode().rsplit(":", 1)
            up = socket.create_connection((host, int(port)), timeout=10)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            while True:
                ready, _, _ = select.select([conn, up], [], [], 10)
                for end in ready:
                    data = end.recv(65536)
                    if not data:
                        return
                    (up if end is conn else conn).sendall(data)
        except OSError:
            pass

    receiver, via = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    _serve(receiver, trickle)
    _serve(via, proxy)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", cert[0])
    monkeypatch.setenv("HTTPS_PROXY", f"https://127.0.0.1:{via.getsockname()[1]}")
    try:
        notifier = Notifier(store, "", "always", delays=(), timeout=0.2)
        outcome = notifier.post(f"https://127.0.0.1:{receiver.getsockname()[1]}/", {})
        assert outcome == ("failed", "no answer within 0.6 s")
        assert cut.wait(5) and notifier._stuck == 0
    finally:
        receiver.close()
        via.close()


def test_a_post_still_connecting_at_its_deadline_is_cut_once_connected(store, monkeypatch):  # noqa: F811,E501
    """Its name takes 1 s to resolve (or its host has many addresses that do not answer, or
    it redirects to such a host): nothing to cut at the deadline, so it is left behind, and
    then it trickles for as long as it likes, holding a thread and a MAX_STUCK place."""
    real = socket.getaddrinfo

    def slow_dns(host, *args, **kwargs):
        if host == "slow.invalid":
            time.sleep(1.0)
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_dns)
    slow = Trickler()
    try:
        notifier = Notifier(store, "", "always", delays=(), timeout=0.2)
        url = slow.url.replace("127.0.0.1", "slow.invalid")
        assert notifier.post(url, {}) == ("failed", "no answer within 0.6 s")
        wait_until = time.monotonic() + 5  # it connects 1 s in; the answer would take 50 s
        while (notifier._stuck or not slow.cut) and time.monotonic() < wait_until:
            time.sleep(0.05)
        assert notifier._stuck == 0 and slow.cut
    finally:
        slow.close()


def test_cut_never_reaches_another_threads_request():
    """Thread ids are reused at once: a POST thread that ends just after the waiting thread
    saw it alive, and a new one (another lane's) that connects meanwhile, has its socket cut."""
    listener = socket.create_server(("127.0.0.1", 0))

    def other_post(tracked, other_cut, done):
        sock = socket.create_connection(listener.getsockname(), timeout=5)
        if hasattr(cuttable.SOCKETS, "begin"):
            cuttable.SOCKETS.begin()
        cuttable.SOCKETS.track(sock)
        tracked.set()
        try:
            ready, _, _ = select.select([sock], [], [], 5)
            if not done.is_set() and ready and sock.recv(1) == b"":
                other_cut.set()
        except OSError:
            other_cut.set()
        finally:
            cuttable.SOCKETS.forget()
            sock.close()

    try:
        for _ in range(50):  # until the new thread has the ended one's id (at once, mostly)
            gone = threading.Thread(target=lambda: None)
            gone.start()
            gone.join()
            tracked, other_cut, done = threading.Event(), threading.Event(), threading.Event()
            other = threading.Thread(target=other_post, args=(tracked, other_cut, done))
            other.start()
            assert tracked.wait(5)
            if other.ident == gone.ident:
                break
            done.set()
            listener.accept()[0].close()
            other.join(5)
        else:
            pytest.skip("thread ids not reused")
        cuttable.SOCKETS.cut(gone)
        assert not other_cut.wait(0.5)
        done.set()
        listener.accept()[0].close()
        other.join(5)
    finally:
        listener.close()
