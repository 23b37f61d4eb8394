"""requests sessions whose request another thread can cut short: the notifier's POSTs.

requests has no limit on a request's whole time, only on each read: a receiver that sends its
answer a byte at a time keeps a POST going for as long as it likes. The connections made here
tell `SOCKETS` which socket each thread's request uses, so that the thread that waits for it
can shut that socket down at a deadline: the request then fails at once and its thread ends
(one still connecting then, once it has connected). Requests through a SOCKS proxy keep
urllib3's own connections, which cannot be cut.
"""

from __future__ import annotations

import socket
import threading

import requests
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


class Sockets:
    """The socket each POST thread's request uses now, by its Thread (not its id: ids are
    reused as soon as a thread ends), from `begin` to `forget`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_thread: dict[threading.Thread, socket.socket | None] = {}
        self._cut: set[threading.Thread] = set()  # cut: what they connect is shut down at once

    def begin(self) -> None:
        """The calling thread's request starts (cut from now on, even before it connects)."""
        with self._lock:
            self._by_thread[threading.current_thread()] = None

    def track(self, sock) -> None:
        """The calling thread's request uses `sock` now; shut down at once if it was cut."""
        while not isinstance(sock, socket.socket):  # TLS in TLS (an https:// proxy)
            sock = sock.socket  # urllib3's SSLTransport: the TLS socket to the proxy
        me = threading.current_thread()
        with self._lock:
            cut = me in self._cut
            if not cut:
                self._by_thread[me] = sock
        if cut:
            _shut(sock)

    def forget(self) -> None:
        """The calling thread's request is over."""
        me = threading.current_thread()
        with self._lock:
            self._by_thread.pop(me, None)
            self._cut.discard(me)

    def cut(self, thread: threading.Thread) -> bool:
        """Shut down the socket of that thread's request, and any it connects from now on (so
        one still connecting ends once connected); False if it had none yet (or has ended)."""
        with self._lock:
            if thread not in self._by_thread:
                return False
            self._cut.add(thread)
            sock = self._by_thread[thread]
            self._by_thread[thread] = None
        if sock is None:
            return False
        _shut(sock)
        return True


def _shut(sock: socket.socket) -> None:
    try:  # the plain socket's shutdown, under TLS too: the blocked read ends at once
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # closed already: the request is ending anyway


SOCKETS = Sockets()


class _Tracked:
    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        SOCKETS.track(self.sock)  # type: ignore[attr-defined]


class _HTTPConnection(_Tracked, HTTPConnection):
    pass


class _HTTPSConnection(_Tracked, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _Adapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **kwargs):
        manager = super().proxy_manager_for(proxy, **kwargs)
        if not proxy.lower().startswith("socks"):  # (SOCKS has connection classes of its own)
            manager.pool_classes_by_scheme = _POOLS
        return manager


def session() -> requests.Session:
    """A requests session (proxies from the environment, as requests.post) whose requests
    SOCKETS.cut can end from another thread."""
    made = requests.Session()
    for prefix in ("http://", "https://"):
        made.mount(prefix, _Adapter())
    return made
