"""HTTP/1.1 to workers on kept-alive connections of the standard library's http.client, and the
frames a followed run arrives in.

The controller makes one request per job on its hot path (start the run and follow it to the
end), plus a health check per worker every few seconds. Measured here with 500 sequential
`GET /healthz` to a worker, requests spent 1.2-1.5 ms of client CPU per call against 0.27-0.34
ms for http.client on a kept-alive connection, so the worker API is spoken with http.client
directly; everything else (notifications, the CLI) keeps requests.

Run frames (`application/x-maketrigger-run`), one per line header:
    run <json>\\n            the run as it started (the first frame of a started run)
    log <n>\\n<n bytes>      log bytes, in order, from the offset asked for
    tick\\n                  nothing new for a while; the worker is alive
    end <json>\\n            the run ended and every log byte was sent: its final state
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from urllib.parse import urlencode, urlsplit

FRAMES_TYPE = "application/x-maketrigger-run"
READ_SIZE = 256 * 1024
MERGE_LIMIT = 1 << 20  # consecutive log frames already received are handed on as one piece
MAX_IDLE = 16  # kept-alive connections per worker address


class ConnectFailed(OSError):
    """No connection could be made: nothing was sent. `refused` when nobody listens."""

    def __init__(self, message: str, refused: bool):
        super().__init__(message)
        self.refused = refused


class Broken(OSError):
    """The connection failed after the request may have been sent; `timeout` if it went quiet."""

    def __init__(self, message: str, timeout: bool):
        super().__init__(message)
        self.timeout = timeout


class Reply:
    """A complete answer."""

    def __init__(self, status: int, reason: str, body: bytes):
        self.status_code, self.reason, self.body = status, reason, body

    def json(self):
        return json.loads(self.body)


class Stream:
    """An answer whose body is read as it arrives. close() (from any thread) aborts it: a read
    blocked on it wakes with Broken. release() when done with it, in the thread that reads."""

    def __init__(self, resp: http.client.HTTPResponse, conn: http.client.HTTPConnection,
                 pool: Connections, key: tuple):
        self.status_code, self.reason = resp.status, resp.reason
        self.content_type = resp.getheader("Content-Type", "")
        self._resp, self._conn, self._pool, self._key = resp, conn, pool, key
        self._aborted = self._released = False

    def read1(self) -> bytes:
        """Whatever part of the body has arrived (b"" at its end)."""
        try:
            data = self._resp.read1(READ_SIZE)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise _broken(exc) from None
        if self._aborted:
            raise Broken("the stream was closed", timeout=False)
        return data

    def body(self) -> bytes:
        try:
            return self._resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise _broken(exc) from None

    def set_timeout(self, seconds: float) -> None:
        """How long a read may wait for the worker from now on."""
        if self._conn.sock is not None:
            self._conn.sock.settimeout(seconds)

    def release(self) -> None:
        """Done with it: a fully read answer gives its connection back for reuse."""
        if self._released:
            return
        self._released = True
        if not self._aborted and self._resp.isclosed() and not self._resp.will_close:
            self._pool.put(self._key, self._conn)
        else:
            self._conn.close()

    def close(self) -> None:
        """Abort it, from any thread: the socket is shut down, which wakes a blocked read."""
        if self._released:
            return  # its connection may be someone else's now
        self._aborted = True
        sock = self._conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _still_open(sock: socket.socket) -> bool:
    """Whether an idle kept-alive connection is still open: nothing (not even its end) to read."""
    try:
        sock.settimeout(0)  # else Python waits up to the timeout for something to read
        return not sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False


def _broken(exc: BaseException) -> Broken:
    timeout = isinstance(exc, TimeoutError)
    return Broken(f"{type(exc).__name__}: {exc}"[:300], timeout=timeout)


class Connections:
    """Kept-alive connections to worker addresses, one user at a time each."""

    def __init__(self, token: str):
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._idle: dict[tuple, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._split: dict[str, tuple] = {}
        self._ssl: ssl.SSLContext | None = None

    def _key(self, base: str) -> tuple:
        key = self._split.get(base)
        if key is None:
            parts = urlsplit(base)
            https = parts.scheme == "https"
            key = (https, parts.hostname, parts.port or (443 if https else 80),
                   parts.path.rstrip("/"))
            self._split[base] = key
        return key

    def _connect(self, key: tuple, timeout: float) -> http.client.HTTPConnection:
        https, host, port, _ = key
        if https:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.connect()
        except OSError as exc:
            conn.close()
            raise ConnectFailed(f"{type(exc).__name__}: {exc}"[:300],
                                refused=isinstance(exc, ConnectionRefusedError)) from None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _take(self, key: tuple) -> http.client.HTTPConnection | None:
        """An idle connection that the worker has not closed meanwhile, or None."""
        while True:
            with self._lock:
                idle = self._idle.get(key)
                if not idle:
                    return None
                conn = idle.pop()
            if conn.sock is not None and _still_open(conn.sock):
                return conn
            conn.close()  # closed by the worker (or junk arrived): drop it

    def put(self, key: tuple, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < MAX_IDLE:
                idle.append(conn)
                return
        conn.close()

    def request(self, base: str, method: str, path: str, *, params: dict | None = None,
                body: dict | None = None, timeout: tuple[float, float] = (2.0, 5.0),
                stream: bool = False) -> Reply | Stream:
        """One request; raises ConnectFailed (nothing sent) or Broken (maybe sent). A kept-alive
        connection that turns out closed is replaced once: every call the controller makes to
        a worker may be repeated (a repeated start is refused as `exists`)."""
        key = self._key(base)
        url = key[3] + path + (f"?{urlencode(params)}" if params else "")
        headers = dict(self.headers)
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            conn = self._take(key)
            reused = conn is not None
            if conn is None:
                conn = self._connect(key, timeout[0])
            conn.sock.settimeout(timeout[1])
            try:
                conn.request(method, url, body=payload, headers=headers)
                resp = conn.getresponse()
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected) as exc:
                conn.close()
                if reused and attempt == 1:
                    continue  # the worker closed it just as it was reused
                raise _broken(exc) from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise _broken(exc) from None
            answer = Stream(resp, conn, self, key)
            if stream:
                return answer
            try:
                data = answer.body()
            finally:
                answer.release()
            return Reply(resp.status, resp.reason, data)
        raise AssertionError("unreachable")


def frames(stream: Stream) -> Iterator[bytes | dict]:
    """Parse run frames: log bytes (consecutive frames already received merged), then the end
    state as a dict (the last item). Ends without a dict if the worker ended the body early."""
    buf = bytearray()
    while True:
        merged = bytearray()
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            kind, _, arg = bytes(buf[:nl]).partition(b" ")
            if kind == b"log":
                size = int(arg)
                if len(buf) < nl + 1 + size:
                    break
                with memoryview(buf) as view:  # copied once, into `merged`
                    merged += view[nl + 1:nl + 1 + size]
                del buf[:nl + 1 + size]
                if len(merged) >= MERGE_LIMIT:
                    break
            elif kind in (b"run", b"tick"):
                del buf[:nl + 1]
            elif kind == b"end":
                if merged:
                    yield bytes(merged)
                yield json.loads(arg)
                return
            else:
                raise Broken(f"unexpected frame from the worker: {bytes(buf[:40])!r}",
                             timeout=False)
        if merged:
            yield bytes(merged)
            continue
        data = stream.read1()
        if not data:
            return
        buf += data
