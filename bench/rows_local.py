"""Rows on the host: the floor (fork/exec of make by the client itself), adnanh/webhook running
the same make synchronously on 127.0.0.1, and the relay: two bare Flask apps under gunicorn, one
relaying to the other, which runs make (bench/relay_app.py), the floor of maketrigger's own
architecture."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench import httpload
from bench.common import (
    ROOT,
    ServerProc,
    Sizes,
    child_pids,
    children_cpu_seconds,
    cpu_seconds,
    parse_stamp,
    pooled,
)

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


def stop_group(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM to the process group a server was started in, SIGKILL after `grace` seconds."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def spawn(argv: list[str], capture: bool = False) -> bytes:
    """posix_spawn (glibc: clone with CLONE_VFORK, as Go's os/exec) and wait: the cheapest
    fork/exec there is from Python. Stdout captured through a pipe, or sent to /dev/null."""
    read_fd, write_fd = os.pipe() if capture else (None, os.open(os.devnull, os.O_WRONLY))
    try:
        pid = os.posix_spawnp(argv[0], argv, os.environ,
                              file_actions=[(os.POSIX_SPAWN_DUP2, write_fd, 1)])
    finally:
        os.close(write_fd)
    out = bytearray()
    if capture:
        with os.fdopen(read_fd, "rb") as pipe:
            while chunk := pipe.read(65536):
                out += chunk
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"exit {os.waitstatus_to_exitcode(status)}")
    return bytes(out)


class Floor:
    """`make -C w noop` spawned by the client itself: what any runner adds to."""
    name, label, kind = "floor", "fork/exec make", "sync"

    def __init__(self, workspace: Path, sizes: Sizes):
        self.ws = str(workspace)
        self.rt_count, self.stamp_count, self.load_count = sizes.rt, sizes.stamp, sizes.http_load

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def argv(self, target: str, variables: dict | None = None) -> list[str]:
        return ["make", "-C", self.ws, *(f"{k}={v}" for k, v in (variables or {}).items()),
                target]

    def roundtrip(self, i: int) -> None:
        spawn(self.argv("noop"))

    def stamp(self, i: int) -> float:
        sent = time.time_ns()
        return (parse_stamp(spawn(self.argv("stamp"), capture=True)) - sent) / 1e9

    def load(self, mode: str, count: int, concurrency: int, seconds: float, raw: Path) -> dict:
        def one(i: int) -> None:
            spawn(self.argv("noop", {"N": i} if mode == "distinct" else None))
        return pooled(one, count, concurrency, seconds)

    def processes(self) -> list[ServerProc]:
        return []

    def cpu_parts(self) -> dict:
        return {"make (the client's children)": children_cpu_seconds}


class Webhook:
    """adnanh/webhook: one hook per target, `include-command-output-in-response` so the answer
    waits for make; distinct jobs pass N as a query parameter into make's environment."""
    name, label, kind = "webhook", "adnanh/webhook", "sync"

    def __init__(self, workspace: Path, sizes: Sizes, raw: Path):
        self.ws, self.raw = str(workspace), raw
        self.rt_count, self.stamp_count, self.load_count = sizes.rt, sizes.stamp, sizes.http_load
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def hooks(self) -> list[dict]:
        def hook(hook_id: str, target: str, env: bool = False) -> dict:
            h = {"id": hook_id, "execute-command": "/usr/bin/make",
                 "command-working-directory": self.ws,
                 "include-command-output-in-response": True,
                 "pass-arguments-to-command": [{"source": "string", "name": "-C"},
                                               {"source": "string", "name": self.ws},
                                               {"source": "string", "name": target}]}
            if env:
                h["pass-environment-to-command"] = [{"source": "url", "name": "n",
                                                     "envname": "N"}]
            return h
        return [hook("noop", "noop"), hook("noopn", "noop", env=True), hook("stamp", "stamp")]

    def __enter__(self):
        hooks = self.raw / "webhook-hooks.json"
        hooks.write_text(json.dumps(self.hooks(), indent=1))
        self.log = open(self.raw / "webhook.log", "wb")  # noqa: SIM115 (closed in __exit__)
        self.proc = subprocess.Popen(
            ["webhook", "-hooks", str(hooks), "-ip", "127.0.0.1", "-port", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_port(self.port, self.proc)
        except Exception:
            self.__exit__()
            raise
        self.client = httpload.Client(self.port)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc:
            stop_group(self.proc)
        self.log.close()

    def _post(self, path: str) -> bytes:
        status, body = self.client.request("POST", path)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {body[:100]!r}")
        return body

    def roundtrip(self, i: int) -> None:
        self._post("/hooks/noop")

    def stamp(self, i: int) -> float:
        sent = time.time_ns()
        return (parse_stamp(self._post("/hooks/stamp")) - sent) / 1e9

    def load(self, mode: str, count: int, concurrency: int, seconds: float, raw: Path) -> dict:
        if mode == "identical":
            return httpload.hey(self.port, "/hooks/noop", None, count, concurrency, seconds,
                                raw, ok=(200,))
        return httpload.distinct(self.port, lambda i: (f"/hooks/noopn?n={i}", None), count,
                                 concurrency, seconds, ok=(200,))

    def processes(self) -> list[ServerProc]:
        return [ServerProc("webhook", "serving", self.proc.pid)]

    def cpu_parts(self) -> dict:
        pid = self.proc.pid
        return {"webhook (with the make it ran)": lambda: cpu_seconds(pid)}


class Relay:
    """Two bare Flask apps under gunicorn with maketrigger's settings (bench/relay_app.py): the
    client POSTs to the front one, which relays over a kept-alive connection to the back one,
    which runs make and answers with its output. Two HTTP hops and make, nothing else: the
    least maketrigger's design (controller and worker, Flask under gunicorn) can cost."""
    name, label, kind = "relay", "bare two-hop Flask relay", "sync"

    def __init__(self, workspace: Path, sizes: Sizes, raw: Path):
        self.ws, self.raw = str(workspace), raw
        self.rt_count, self.stamp_count, self.load_count = sizes.rt, sizes.stamp, sizes.http_load
        self.concurrency, self.load_seconds = sizes.concurrency, sizes.load_seconds
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: list = []
        self.port = 0

    def _start(self, name: str, app: str, keepalive: int) -> int:
        port = free_port()
        log = open(self.raw / f"relay-{name}.log", "wb")  # noqa: SIM115 (closed in __exit__)
        self.logs.append(log)
        proc = self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "python:bench.relay_conf",
             "--keep-alive", str(keepalive), "--bind", f"127.0.0.1:{port}", app],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(port, proc)
        return port

    def __enter__(self):
        try:
            back = self._start("back", f"bench.relay_app:back({self.ws!r})", 75)
            self.port = self._start("front", f"bench.relay_app:front('127.0.0.1:{back}')", 5)
            self.client = httpload.Client(self.port)
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs.values():
            stop_group(proc, grace=15)
        for log in self.logs:
            log.close()

    def _post(self, body: dict) -> dict:
        status, raw = self.client.request("POST", "/jobs", body)
        answer = json.loads(raw) if status == 200 else {}
        if status != 200 or answer.get("exit_code") != 0:
            raise RuntimeError(f"HTTP {status}: {raw[:150]!r}")
        return answer

    def roundtrip(self, i: int) -> None:
        self._post({"target": "noop"})

    def stamp(self, i: int) -> float:
        sent = time.time_ns()
        return (parse_stamp(self._post({"target": "stamp"})["log"].encode()) - sent) / 1e9

    def load(self, mode: str, count: int, concurrency: int, seconds: float, raw: Path) -> dict:
        if mode == "identical":
            return httpload.hey(self.port, "/jobs", {"target": "noop"}, count, concurrency,
                                seconds, raw, ok=(200,))
        return httpload.distinct(
            self.port, lambda i: ("/jobs", {"target": "noop", "vars": {"N": str(i)}}), count,
            concurrency, seconds, ok=(200,))

    def extra_figures(self, bursts: int = 3) -> dict:
        """The identical burst again, against the front app's `/accept`, which parses the POST
        and answers 202, nothing else: the ceiling of accepted triggers on this stack. The
        median of `bursts` bursts, a short burst's rate being noisy here."""
        results = [httpload.hey(self.port, "/accept", {"target": "noop"}, self.load_count,
                                self.concurrency, self.load_seconds,
                                self.raw / f"relay-accept-{i}.csv", ok=(202,))
                   for i in range(bursts)]
        results.sort(key=lambda r: r["accepted_per_s"])
        result = {**results[len(results) // 2],
                  "bursts_accepted_per_s": [r["accepted_per_s"] for r in results],
                  "errors": sum(r["errors"] for r in results)}
        log.info("relay: /accept: %s accepted/s (median of %d bursts), %d errors",
                 ", ".join(f"{r:.0f}" for r in result["bursts_accepted_per_s"]), bursts,
                 result["errors"])
        return {"accept_only": result}

    def processes(self) -> list[ServerProc]:
        out = []
        for name, proc in self.procs.items():
            out.append(ServerProc(f"relay-{name}", "master", proc.pid))
            out += [ServerProc(f"relay-{name}", "serving", pid) for pid in child_pids(proc.pid)]
        return out

    def cpu_parts(self) -> dict:
        return {p.name: (lambda pid=p.pid: cpu_seconds(pid)) for p in self.processes()}
