"""The maketrigger-only figures, on the host processes: streaming a 200 MB log end to end, and
POST /jobs and GET /jobs/<id> with an empty history against one of 1,000,000 jobs."""

from __future__ import annotations

import json
import logging
import random
import shutil
import sqlite3
import time
from pathlib import Path

import requests

from bench.common import MB, RssSampler, Series, Sizes, status_kib
from bench.httpload import Client
from bench.rows_maketrigger import MaketriggerHost

log = logging.getLogger(__name__)
WARMUP = 10


def log_stream(row: MaketriggerHost, sizes: Sizes) -> dict:
    """Trigger `big`, follow its log over HTTP to the end: MB/s from the trigger to the last
    byte, and how much each server process's RSS grew meanwhile."""
    procs = row.processes()
    before = {p.name: status_kib(p.pid) * 1024 / MB for p in procs}
    deadline = time.monotonic() + max(sizes.load_seconds, 300)
    received = 0
    with RssSampler(procs, interval=0.05) as sampler:
        started = time.perf_counter()
        job = row.post_job({"target": "big"}, expect=202)
        with requests.get(f"http://127.0.0.1:{row.port}/jobs/{job['id']}/log",
                          params={"follow": "1"}, stream=True, timeout=60) as resp:
            resp.raise_for_status()
            for chunk in resp.iter_content(1 << 20):
                received += len(chunk)
                if time.monotonic() > deadline:
                    break
        took = time.perf_counter() - started
        while (job := row.get(f"/jobs/{job['id']}"))["state"] not in ("succeeded", "failed",
                                                                       "cancelled", "lost"):
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
    growth = {name: sampler.peak.get(name, before[name]) - before[name] for name in before}
    return {"bytes_expected": sizes.big_bytes, "bytes_received": received,
            "seconds": took, "mb_per_s": received / MB / took,
            "job_state": job["state"], "log_size": job["log_size"],
            "log_truncated": job["log_truncated"],
            "rss_before": before, "rss_growth": growth,
            "max_rss_growth": max(growth.values())}


def fill(db: Path, count: int, worker_url: str) -> float:
    """`count` ended jobs in one transaction (executemany), into the columns the store made;
    returns the seconds it took."""
    started = time.perf_counter()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA cache_size=-262144")  # 256 MiB: the indexes stay in memory
    columns = [row[1] for row in conn.execute("PRAGMA table_info(jobs)")]
    now = time.time() - count
    targets = ("noop", "stamp", "site", "lint", "check-links")

    def job(i: int) -> dict:
        failed = i % 17 == 0
        created = now + i
        return {"id": i, "target": targets[i % len(targets)],
                "vars": "{}" if i % 3 else json.dumps({"N": str(i)}), "selector": None,
                "worker": worker_url, "state": "failed" if failed else "succeeded",
                "exit_code": 2 if failed else 0,
                "error": "make ended with exit status 2" if failed else None,
                "source": ("api", "cli", "schedule")[i % 3], "timeout": None,
                "created_at": created, "started_at": created + 0.01,
                "finished_at": created + 0.05, "log_size": 0, "log_truncated": 0,
                "notify": None, "retries": 0, "attempt": 0, "log_base": 0}

    used = [c for c in columns if c in job(1)]
    sql = f"INSERT INTO jobs ({', '.join(used)}) VALUES ({', '.join('?' * len(used))})"
    conn.execute("BEGIN")
    conn.executemany(sql, (tuple(map(job(i).__getitem__, used)) for i in range(1, count + 1)))
    conn.execute("COMMIT")
    conn.close()
    return time.perf_counter() - started


class ApiProbe:
    """Sequential requests to one controller: POST /jobs (distinct, not waiting), GET
    /jobs/<id> of `ids` (or of the jobs it made, when the history was empty), GET /jobs."""

    def __init__(self, port: int, ids: list[int]):
        self.client, self.ids, self.made = Client(port), ids, []

    def _timed(self, method: str, path: str, body: dict | None = None) -> tuple[float, bytes]:
        started = time.perf_counter()
        status, raw = self.client.request(method, path, body)
        took = time.perf_counter() - started
        if status not in (200, 202):
            raise RuntimeError(f"{method} {path}: HTTP {status}")
        return took, raw

    def post(self, i: int) -> float:
        took, raw = self._timed("POST", "/jobs", {"target": "noop", "vars": {"N": f"9{i:07d}"}})
        self.made.append(json.loads(raw)["id"])
        return took

    def get(self, i: int) -> float:
        ids = self.ids or self.made
        return self._timed("GET", f"/jobs/{ids[i % len(ids)]}")[0]

    def listing(self, i: int) -> float:
        return self._timed("GET", "/jobs")[0]


def interleaved(probes: dict[str, ApiProbe], method: str, count: int, seconds: float) -> dict:
    """`count` requests of one kind to each controller, alternating between them (and which
    of them goes first), so that the machine's noise falls on both alike."""
    series = {label: Series() for label in probes}
    order = list(probes)
    deadline = time.monotonic() + seconds
    for i in range(count):
        if time.monotonic() > deadline:
            for one in series.values():
                one.stopped_by_time = True
            break
        for label in (order if i % 2 == 0 else order[::-1]):
            try:
                series[label].seconds.append(getattr(probes[label], method)(i))
            except Exception as exc:  # a failed request is a figure
                series[label].errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
    return {label: one.summary() for label, one in series.items()}


def wait_healthy_worker(port: int, seconds: float = 30) -> None:
    client = Client(port)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            status, body = client.request("GET", "/workers")
            if status == 200 and any(w["healthy"] for w in json.loads(body)["workers"]):
                return
            time.sleep(0.1)
    finally:
        client.close()
    raise RuntimeError("the controller saw no healthy worker")


def wait_drained(port: int, seconds: float) -> bool:
    """Until the controller has no queued or running job (or `seconds` passed)."""
    client = Client(port)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            busy = False
            for state in ("queued", "running"):
                status, body = client.request("GET", f"/jobs?state={state}&limit=1")
                busy = busy or bool(json.loads(body)["jobs"])
            if not busy:
                return True
            time.sleep(0.1)
        return False
    finally:
        client.close()


def history(row: MaketriggerHost, sizes: Sizes) -> dict:
    """The same requests to a controller with an empty history and to one with
    `sizes.history` jobs: both up at once, each with a worker of its own, their requests
    interleaved; GETs only once the POSTed jobs have ended, so no build runs under them."""
    from trigger_server.store import Store  # the schema exactly as the store makes it

    out: dict = {}
    procs = []
    try:
        probes = {}
        rng = random.Random(7)
        for label, count in (("empty", 0), ("filled", sizes.history)):
            db = row.tmp / f"history-{label}.db"
            Store(str(db))
            fill_s = fill(db, count, "http://127.0.0.1:1") if count else 0.0
            log.info("history: %s database with %d jobs (filled in %.1f s)", label, count,
                     fill_s)
            workspace = row.tmp / f"history-{label}-ws"
            workspace.mkdir()
            shutil.copy(row.ws / "Makefile", workspace / "Makefile")
            worker = row.start_worker(workspace, f"mt-history-{label}-worker")
            procs.append(worker)
            started = time.perf_counter()
            server = row.start_controller(db, f"mt-history-{label}", worker)
            procs.append(server)
            out[label] = {"jobs": count, "fill_s": fill_s,
                          "controller_start_s": time.perf_counter() - started,
                          "db_mb": db.stat().st_size / MB}
            wait_healthy_worker(server.port)
            ids = [rng.randint(1, count) for _ in range(sizes.api_samples)] if count else []
            probes[label] = ApiProbe(server.port, ids)
            for i in range(WARMUP):  # the first requests of a fresh process import and cache
                probes[label].post(i)
                probes[label].get(i)
                probes[label].listing(i)
        phases = (("post_jobs_ms", "post", sizes.api_samples),
                  ("get_job_ms", "get", sizes.api_samples),
                  ("list_jobs_ms", "listing", max(sizes.api_samples // 5, 10)))
        for key, method, count in phases:
            for label, figures in interleaved(probes, method, count,
                                              sizes.loop_seconds).items():
                out[label][key] = figures
            if method == "post":
                for label, probe in probes.items():
                    out[label]["drained_after_posts"] = wait_drained(probe.client.port,
                                                                     sizes.drain_seconds)
        for probe in probes.values():
            probe.client.close()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.stop()
    ratios = {}
    for key in ("post_jobs_ms", "get_job_ms", "list_jobs_ms"):
        for q in ("p50", "p95"):
            ratios[f"{key}_{q}"] = out["filled"][key][q] / out["empty"][key][q]
    out["ratio_filled_to_empty"] = ratios
    return out
