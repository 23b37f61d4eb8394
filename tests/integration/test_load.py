"""A bounded load: many triggers from concurrent clients against two real workers. Every
accepted trigger ends in a terminal job, nothing runs twice, the database stays sound.
The size comes from LOAD_TRIGGERS (default 2,000); figures are reported, never asserted."""

import json
import os
import sqlite3
import threading
import time
from collections import Counter

import requests

from .procs import wait_for

MAKEFILE = """\
ok:
\t@echo ok $(N)
"""
CLIENTS = 20


def test_concurrent_triggers_all_end_once_with_no_server_error(stack):
    total = int(os.environ.get("LOAD_TRIGGERS", "2000"))
    w1 = stack.worker(stack.workspace("a", MAKEFILE), name="a", WORKER_VARS="N",
                      WORKER_KEEP_RUNS=100000)
    w2 = stack.worker(stack.workspace("b", MAKEFILE), name="b", WORKER_VARS="N",
                      WORKER_KEEP_RUNS=100000)
    stack.server([w1, w2], TRIGGER_THREADS=32)
    statuses, job_ids, lock = Counter(), [], threading.Lock()

    def client(number: int) -> None:
        session = requests.Session()
        for i in range(total // CLIENTS):
            # half identical (they coalesce while queued), half distinct jobs
            body = {"target": "ok", "vars": {"N": str(i % 2 and number * 10000 + i or 0)}}
            resp = session.post(f"{stack.url}/jobs", json=body, timeout=30)
            with lock:
                statuses[resp.status_code] += 1
                if resp.status_code == 202:
                    job_ids.append(resp.json()["id"])

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    accepted_in = time.monotonic() - started
    assert statuses == {202: total}, statuses  # every trigger accepted, no 5xx

    def all_ended():
        open_jobs = [j for s in ("queued", "running")
                     for j in stack.get(f"/jobs?state={s}&limit=500")["jobs"]]
        return not open_jobs

    wait_for(all_ended, timeout=600, interval=0.5, what="every job to end")
    finished_in = time.monotonic() - started
    jobs = {}
    before = None
    while True:
        page = stack.get("/jobs?limit=500" + (f"&before={before}" if before else ""))
        jobs.update({j["id"]: j for j in page["jobs"]})
        if not page["next_before"]:
            break
        before = page["next_before"]
    assert set(job_ids) <= set(jobs)
    assert Counter(j["state"] for j in jobs.values()) == {"succeeded": len(jobs)}

    runs = Counter()  # every run record on both workers: one per job, on one worker only
    for name in ("a", "b"):
        for record in (stack.tmp / f"{name}-state" / "runs").glob("*.json"):
            runs[json.loads(record.read_text().splitlines()[-1])["id"].rsplit("-", 1)[1]] += 1
    assert len(runs) == len(jobs) and set(runs.values()) == {1}

    db = sqlite3.connect(stack.tmp / "trigger.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    print(f"\nload: {total} triggers from {CLIENTS} clients accepted in {accepted_in:.1f} s "
          f"({total / accepted_in:.0f}/s); {len(jobs)} jobs "
          f"({total - len(jobs)} coalesced), all ended {finished_in:.1f} s after the start")
