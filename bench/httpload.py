"""HTTP clients of the benchmark, all to 127.0.0.1 only: one keep-alive connection for the
sequential loops, `hey` for bursts of identical requests, and a small asyncio keep-alive client
for distinct requests (hey sends one body and one URL, so it cannot make distinct jobs)."""

from __future__ import annotations

import asyncio
import csv
import http.client
import io
import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from bench.common import summary_ms

LOCAL = "127.0.0.1"


class Client:
    """One keep-alive HTTP/1.1 connection; reconnects after a failure (counted by the caller),
    and before a request that follows a pause longer than IDLE_REUSE, since a server may
    have closed an idle connection meanwhile (gunicorn's keepalive is 5 s)."""

    IDLE_REUSE = 2.0

    def __init__(self, port: int, timeout: float = 120):
        self.port, self.timeout = port, timeout
        self.conn: http.client.HTTPConnection | None = None
        self.last_used = 0.0

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        if self.conn is not None and time.monotonic() - self.last_used > self.IDLE_REUSE:
            self.close()
        if self.conn is None:
            self.conn = http.client.HTTPConnection(LOCAL, self.port, timeout=self.timeout)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
            data = resp.read()
            self.last_used = time.monotonic()
            return resp.status, data
        except (OSError, http.client.HTTPException):
            self.close()
            raise

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def hey(port: int, path: str, body: dict | None, count: int, concurrency: int, seconds: float,
        raw_csv: Path | None = None, ok: tuple[int, ...] = (200, 202)) -> dict:
    """A bounded `hey -n COUNT -c C` POST burst of one identical request (killed after
    `seconds`)."""
    argv = ["hey", "-n", str(count), "-c", str(concurrency), "-m", "POST", "-t", "30",
            "-o", "csv"]
    if body is not None:
        argv += ["-T", "application/json", "-d", json.dumps(body)]
    argv.append(f"http://{LOCAL}:{port}{path}")
    started = time.perf_counter()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds)
        out, timed_out = done.stdout, False
    except subprocess.TimeoutExpired as exc:
        out, timed_out = (exc.stdout or b"").decode(errors="replace"), True
    wall = time.perf_counter() - started
    if raw_csv:
        raw_csv.write_text(out)
    rows = list(csv.DictReader(io.StringIO(out)))
    statuses = Counter(int(r["status-code"]) for r in rows)
    latencies = [float(r["response-time"]) for r in rows]
    good = sum(n for code, n in statuses.items() if code in ok)
    span = max((float(r["offset"]) + float(r["response-time"]) for r in rows), default=wall)
    errors = count - good
    return {"tool": f"hey -n {count} -c {concurrency}", "requests": count,
            "concurrency": concurrency, "ok": good, "errors": errors,
            "error_kinds": {**{f"HTTP {c}": n for c, n in statuses.items() if c not in ok},
                            **({"no response": count - len(rows)} if count > len(rows) else {}),
                            **({"killed at the time bound": 1} if timed_out else {})},
            "statuses": dict(statuses), "wall_s": span, "accepted_per_s": good / span,
            "latency_ms": summary_ms(latencies)}


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Status, body and whether the server closes the connection."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed")
    status = int(status_line.split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while (size := int((await reader.readline()).split(b";")[0], 16)) > 0:
            body += await reader.readexactly(size)
            await reader.readline()
        await reader.readline()
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, bytes(body), headers.get("connection", "").lower() == "close"


async def _connection(port: int, take: Callable[[], bytes | None], out: list, deadline: float,
                      timeout: float) -> None:
    reader = writer = None
    while time.monotonic() < deadline and (raw := take()) is not None:
        started = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(LOCAL, port)
            writer.write(raw)
            status, body, close = await asyncio.wait_for(_read_response(reader), timeout)
            out.append((started, time.perf_counter() - started, status, body))
            if close:
                writer.close()
                writer = None
        except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError) as exc:
            out.append((started, time.perf_counter() - started, 0, type(exc).__name__.encode()))
            if writer is not None:
                writer.close()
            writer = None
    if writer is not None:
        writer.close()


def distinct(port: int, request: Callable[[int], tuple[str, dict | None]], count: int,
             concurrency: int, seconds: float, ok: tuple[int, ...] = (200, 202)) -> dict:
    """`count` POSTs, each made by `request(i)` -> (path, JSON body or None), over
    `concurrency` keep-alive connections, none sent after `seconds`."""
    def raw(i: int) -> bytes:
        path, body = request(i)
        data = json.dumps(body).encode() if body is not None else b""
        head = (f"POST {path} HTTP/1.1\r\nHost: {LOCAL}:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")
        return head.encode() + data

    pending = iter(range(count))

    def take() -> bytes | None:
        i = next(pending, None)
        return None if i is None else raw(i)

    out: list = []

    async def main() -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(_connection(port, take, out, deadline, 30)
                               for _ in range(concurrency)))

    started = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - started
    statuses = Counter(status for _, _, status, _ in out)
    good = sum(n for code, n in statuses.items() if code in ok)
    kinds = {(f"HTTP {c}" if c else "connection error"): n for c, n in statuses.items()
             if c not in ok}
    if count > len(out):
        kinds["not sent: time bound reached"] = count - len(out)
    return {"tool": f"asyncio keep-alive client, {concurrency} connections", "requests": count,
            "concurrency": concurrency, "ok": good, "errors": count - good, "error_kinds": kinds,
            "statuses": dict(statuses), "wall_s": wall, "accepted_per_s": good / wall,
            "latency_ms": summary_ms([took for _, took, _, _ in out])}
