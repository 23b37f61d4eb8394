"""Rows 5 and 6: maketrigger as processes on the host (started as tests/integration/procs.py
starts them) and as the real compose stack (tests/e2e/stack.py, under a project name of its
own, the client on the published 127.0.0.1 port, controller to worker by service name)."""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import docker

from bench import httpload
from bench.common import (
    ROOT,
    ServerProc,
    Sizes,
    cgroup_cpu_seconds,
    child_pids,
    cpu_seconds,
    parse_stamp,
    pids_named,
    summary_ms,
)
from bench.rows_local import free_port
from tests.e2e.stack import Stack
from tests.integration.procs import Proc

log = logging.getLogger(__name__)
TOKEN = "bench-worker-token"
ENDED = ("succeeded", "failed", "cancelled", "lost")


# The parts of a `"wait": true` round trip, between the client's clock, the job's timestamps
# (created_at, finished_at: milliseconds) and the time the recipe started (date +%s%N).
SEGMENTS = (
    ("client send -> job created (API)", ("sent", "created_at")),
    ("job created -> make's recipe runs (dispatch, worker start, make start)",
     ("created_at", "make started")),
    ("recipe runs -> job finished (make's end, followed and recorded)",
     ("make started", "finished_at")),
    ("job finished -> answer received (the waiting request wakes)",
     ("finished_at", "answered")),
)


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class Maketrigger:
    """What both maketrigger rows share: the API as a client uses it."""
    kind = "async"
    port: int

    def __init__(self, sizes: Sizes):
        self.rt_count, self.stamp_count, self.load_count = sizes.rt, sizes.stamp, sizes.http_load
        self.concurrency = sizes.concurrency
        self.client: httpload.Client | None = None
        self.burst = 0  # makes the distinct bursts' variable values differ between bursts
        self.segments: dict[str, list[float]] = {name: [] for name, _ in SEGMENTS}

    def connect(self) -> None:
        self.client = httpload.Client(self.port)

    def get(self, path: str) -> dict:
        status, body = self.client.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}: {body[:100]!r}")
        return json.loads(body)

    def post_job(self, body: dict, expect: int = 200) -> dict:
        status, raw = self.client.request("POST", "/jobs", body)
        if status != expect:
            raise RuntimeError(f"HTTP {status}: {raw[:150]!r}")
        return json.loads(raw)

    def wait_workers(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if any(w["healthy"] for w in self.get("/workers")["workers"]):
                    return
            except (OSError, RuntimeError):
                self.client.close()
            time.sleep(0.1)
        raise RuntimeError("the controller saw no healthy worker")

    # --- the common figures -------------------------------------------------------------------
    def roundtrip(self, i: int) -> None:
        self.post_job({"target": "noop", "wait": True})

    def stamp(self, i: int) -> float:
        """Also splits the round trip at the job's own timestamps (milliseconds)."""
        sent = time.time_ns()
        job = self.post_job({"target": "stamp", "wait": True})
        answered = time.time_ns()
        status, log_text = self.client.request("GET", f"/jobs/{job['id']}/log")
        stamp = parse_stamp(log_text)
        points = {"sent": sent / 1e9, "created_at": epoch(job["created_at"]),
                  "make started": stamp / 1e9, "finished_at": epoch(job["finished_at"]),
                  "answered": answered / 1e9}
        for name, (start, end) in SEGMENTS:
            self.segments[name].append(points[end] - points[start])
        return (stamp - sent) / 1e9

    def extra_figures(self) -> dict:
        """The median of each part of the `stamp` round trips, in ms; the identical burst
        again while a build runs."""
        return {"breakdown_ms": {name: summary_ms(values).get("p50")
                                 for name, values in self.segments.items()},
                "identical_while_building": self.identical_while_building()}

    def identical_while_building(self, seconds: float = 60) -> dict:
        """The identical burst while the worker is busy with another build, as when a webhook
        storm comes during a long build: every trigger joins one waiting job (the bench's
        `noop` builds are so short that most of the main burst's triggers come after a build
        started, and each such trigger queues and runs a new job)."""
        busy = self.post_job({"target": "busy"}, expect=202)
        deadline = time.monotonic() + seconds
        while self.get(f"/jobs/{busy['id']}")["state"] != "running":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the busy job {busy['id']} did not start")
            time.sleep(0.05)
        try:
            result = httpload.hey(self.port, "/jobs", {"target": "noop"}, self.load_count,
                                  self.concurrency, seconds, ok=(202,))
            result["jobs_made"] = self.last_id() - busy["id"]
        finally:
            status, raw = self.client.request("DELETE", f"/jobs/{busy['id']}")
            if status != 202:
                log.warning("cancelling the busy job: HTTP %s %r", status, raw[:100])
        if not self.drain(seconds):
            raise RuntimeError("the jobs of the burst did not end")
        log.info("%s: identical while a build runs: %.0f accepted/s, %d errors, %d job(s) "
                 "made", self.name, result["accepted_per_s"], result["errors"],
                 result["jobs_made"])
        return result

    def load(self, mode: str, count: int, concurrency: int, seconds: float, raw: Path) -> dict:
        if mode == "identical":
            return httpload.hey(self.port, "/jobs", {"target": "noop"}, count, concurrency,
                                seconds, raw, ok=(202,))
        self.burst += 1
        burst = self.burst

        def request(i: int) -> tuple[str, dict]:
            return "/jobs", {"target": "noop", "vars": {"N": f"{burst}{i:07d}"}}
        return httpload.distinct(self.port, request, count, concurrency, seconds, ok=(202,))

    def last_id(self) -> int:
        jobs = self.get("/jobs?limit=1")["jobs"]
        return jobs[0]["id"] if jobs else 0

    def mark(self) -> int:
        return self.last_id()

    def drain(self, seconds: float) -> bool:
        """Wait (at most `seconds`) until no job is queued or running; whether none is."""
        deadline = time.monotonic() + seconds
        while any(self.get(f"/jobs?state={s}&limit=1")["jobs"] for s in ("queued", "running")):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def settle(self, mark: int, t0: float, seconds: float) -> dict:
        """Wait until no job is queued or running; how many jobs the burst made and how they
        ended, and the jobs it made per second from its start to the last one's end."""
        drained = self.drain(seconds)
        took = time.perf_counter() - t0
        states: dict[str, int] = {}
        before = None
        while True:
            page = self.get("/jobs?limit=500" + (f"&before={before}" if before else ""))
            fresh = [j for j in page["jobs"] if j["id"] > mark]
            for j in fresh:
                states[j["state"]] = states.get(j["state"], 0) + 1
            if len(fresh) < len(page["jobs"]) or not page["next_before"]:
                break
            before = page["next_before"]
        jobs = sum(states.values())
        return {"jobs_run": jobs, "job_states": states, "drained": drained,
                "until_all_ended_s": took, "completed_per_s": jobs / took,
                "failed_jobs": jobs - states.get("succeeded", 0)}


def gunicorn_pair(service: str, master: int) -> list[ServerProc]:
    return [ServerProc(service, "master", master),
            *(ServerProc(service, "serving", pid) for pid in child_pids(master))]


class MaketriggerHost(Maketrigger):
    """trigger-worker and trigger-server under gunicorn on free 127.0.0.1 ports, default
    settings but the token, WORKER_VARS=N and a log cap above the 200 MB log."""
    name, label = "mt-host", "maketrigger (host processes)"

    def __init__(self, workspace: Path, sizes: Sizes, raw: Path):
        super().__init__(sizes)
        self.ws, self.raw, self.sizes = workspace, raw, sizes
        self.tmp = Path(tempfile.mkdtemp(prefix="mtbench-"))
        self.worker: Proc | None = None
        self.server: Proc | None = None

    def __enter__(self) -> MaketriggerHost:
        try:
            self.worker = self.start_worker(self.ws, "mt-host-worker")
            self.server = self.start_controller(self.tmp / "trigger.db", "mt-host-controller",
                                                self.worker)
            self.port = self.server.port
            self.connect()
            self.wait_workers()
        except Exception:
            self.__exit__()
            raise
        return self

    def start_worker(self, workspace: Path, name: str) -> Proc:
        return Proc("worker", {
            "WORKER_WORKDIR": str(workspace), "TRIGGER_WORKER_TOKEN": TOKEN,
            "WORKER_STATE_DIR": str(self.tmp / f"{name}-state"), "WORKER_VARS": "N"},
            str(self.raw / f"{name}.log")).start()

    def start_controller(self, db: Path, name: str, worker: Proc) -> Proc:
        cap = max(self.sizes.big_bytes * 5 // 4, 100 * 2**20)
        return Proc("trigger_server", {
            "TRIGGER_WORKERS": worker.url, "TRIGGER_DB": str(db),
            "TRIGGER_WORKER_TOKEN": TOKEN, "TRIGGER_MAX_LOG_BYTES": str(cap)},
            str(self.raw / f"{name}.log")).start()

    def __exit__(self, *exc) -> None:
        if self.client:
            self.client.close()
        for proc in (self.server, self.worker):
            if proc is not None:
                proc.terminate()
        for proc in (self.server, self.worker):
            if proc is not None:
                proc.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def processes(self) -> list[ServerProc]:
        return [*gunicorn_pair("controller", self.server.proc.pid),
                *gunicorn_pair("worker", self.worker.proc.pid)]

    def cpu_parts(self) -> dict:
        return {p.name: (lambda pid=p.pid: cpu_seconds(pid)) for p in self.processes()}


def settings_documented() -> list[str]:
    """Every setting .env.example documents, as tests/e2e/conftest.py reads them."""
    return re.findall(r"^#?([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), flags=re.M)


class MaketriggerCompose(Maketrigger):
    """docker-compose.yml up with one worker on the bench workspace, defaults otherwise."""
    name, label = "mt-compose", "maketrigger (compose stack)"

    def __init__(self, workspace: Path, sizes: Sizes, raw: Path, run_id: str):
        super().__init__(sizes)
        self.port = free_port()
        self.project = f"mtbench{run_id.replace('-', '')[-8:]}{uuid.uuid4().hex[:4]}"
        env = {name: "" for name in settings_documented()}
        env.update(WORKSPACE=str(workspace), TRIGGER_PORT=str(self.port), WORKER_VARS="N")
        self.docker = docker.from_env(timeout=120)
        self.compose_dir = Path(tempfile.mkdtemp(prefix="mtbench-compose-"))
        self.stack = Stack(self.docker, self.project, env, self.compose_dir)
        self.raw = raw

    def __enter__(self) -> MaketriggerCompose:
        try:
            self.stack.up()
            self.connect()
            self.wait_workers()
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.client:
            self.client.close()
        try:
            (self.raw / "mt-compose.log").write_text(self.stack.logs())
        except Exception:
            log.warning("could not save the compose logs", exc_info=True)
        try:
            self.stack.down()
        finally:
            self.docker.close()
            shutil.rmtree(self.compose_dir, ignore_errors=True)

    def init_pid(self, service: str) -> int:
        container = self.stack.container(service)
        container.reload()
        return container.attrs["State"]["Pid"]

    def processes(self) -> list[ServerProc]:
        procs = []
        for service in ("controller", "worker"):
            masters = [pid for pid in descendants(self.init_pid(service))
                       if "gunicorn" in cmdline(pid) and child_pids(pid)]
            procs += gunicorn_pair(service, masters[0])
        procs += [ServerProc("docker-proxy", "daemon", pid) for pid in self.proxies()]
        return procs

    def proxies(self) -> list[int]:
        """The userland proxy of the published port, if the engine uses one."""
        return [pid for pid in pids_named("docker-proxy")
                if f"-host-port {self.port} " in cmdline(pid) + " "]

    def cpu_parts(self) -> dict:
        parts = {}
        for service in ("controller", "worker"):
            init = self.init_pid(service)
            parts[f"{service} container (cgroup)"] = lambda pid=init: cgroup_cpu_seconds(pid)
        for pid in self.proxies():
            parts[f"docker-proxy {pid}"] = lambda pid=pid: cpu_seconds(pid)
        return parts


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = child_pids(todo.pop())
        out += kids
        todo += kids
    return out
