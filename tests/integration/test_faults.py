"""Crashes on either side: jobs end in a known state, nothing runs twice, work resumes."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import types
from datetime import datetime

import pytest
import requests

from trigger_server import db_lock
from trigger_server.store import Store

from .procs import TOKEN, Proc, pids_of, wait_for


def test_a_worker_killed_mid_build_ends_the_job_lost_and_the_next_job_runs(stack):
    ws = stack.workspace()
    w = stack.worker(ws, name="w")
    stack.server([w])
    job_id = stack.trigger("slow")["id"]
    wait_for(lambda: "start" in stack.log(job_id), what="make to start")
    w.kill(signal.SIGKILL)  # gunicorn master and worker; make survives in its own group
    killed_at = time.monotonic()
    job = stack.wait_state(job_id, timeout=5)
    assert job["state"] == "lost", job
    assert time.monotonic() - killed_at < 5
    assert "worker gone" in job["error"]
    # its log ends with the controller's word on it, as a retried loss's does
    assert stack.log(job_id).endswith(f"\n*** maketrigger: lost: {job['error']}\n")
    # A worker started again on the same workspace ends the orphaned make before any work.
    assert pids_of("sleep 30$")
    w.start()
    wait_for(lambda: not pids_of("sleep 30$"), what="the orphaned make to be ended")
    after = stack.post(json={"target": "ok", "wait": 30})
    assert after.status_code == 200, after.text


def test_a_killed_gunicorn_worker_process_is_replaced_and_its_build_reported_lost(stack):
    w = stack.worker()
    stack.server([w])
    job_id = stack.trigger("slow")["id"]
    wait_for(lambda: "start" in stack.log(job_id), what="make to start")
    (child,) = w.children()
    os.kill(child, signal.SIGKILL)  # the master forks a new worker process, which recovers
    job = stack.wait_state(job_id, timeout=10)
    assert job["state"] == "lost"
    assert "restarted" in job["error"]
    wait_for(lambda: not pids_of("sleep 30$"), what="the orphaned make to be ended")
    assert stack.post(json={"target": "ok", "wait": 30}).status_code == 200


def test_a_frozen_worker_is_unhealthy_and_its_job_lost_after_the_grace(stack):
    w = stack.worker()
    stack.server([w], TRIGGER_LOST_AFTER=3)
    job_id = stack.trigger("slow")["id"]
    wait_for(lambda: "start" in stack.log(job_id), what="make to start")
    for pid in [*w.children(), w.proc.pid]:
            os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: not stack.get("/workers")["workers"][0]["healthy"], timeout=10,
                 what="the frozen worker to show unhealthy")
        job = stack.wait_state(job_id, timeout=30)
        assert job["state"] == "lost" and "TRIGGER_LOST_AFTER" in job["error"]
    finally:
        for pid in [*w.children(), w.proc.pid]:
            os.kill(pid, signal.SIGCONT)
    wait_for(lambda: stack.get("/workers")["workers"][0]["healthy"], timeout=10,
             what="the worker to recover")


def test_a_restarted_controller_keeps_history_and_resumes_its_work(stack):
    w = stack.worker()
    server = stack.server([w])
    done = stack.post(json={"target": "ok", "wait": True}).json()
    running = stack.trigger("slow", vars={}, timeout=3)["id"]
    stack.wait_state(running, "running")
    queued = stack.trigger("ok")["id"]
    server.kill(signal.SIGKILL)
    server.start()
    assert stack.job(done["id"])["state"] == "succeeded"
    assert "building ok" in stack.log(done["id"])
    # the running job is followed again on its worker, to its real end
    job = stack.wait_state(running, timeout=15)
    assert job["state"] == "failed" and job["error"] == "timed out after 3 s"
    assert "start" in stack.log(running)
    assert stack.wait_state(queued)["state"] == "succeeded"
    # nothing ran twice: one run per job on the worker
    assert len([j for j in stack.get("/jobs?limit=500")["jobs"]]) == 3


def test_a_run_that_ended_while_no_controller_followed_it_keeps_its_end_time(stack):
    """Recorded by the next controller, the job's end is when make ended on the worker, not
    when the controller came back (its duration would run until the restart)."""
    w = stack.worker(WORKER_VARS="SECS")
    server = stack.server([w])
    job_id = stack.trigger("slow", vars={"SECS": "1"})["id"]
    stack.wait_state(job_id, "running")
    server.kill(signal.SIGKILL)
    runs = stack.tmp / "worker0-state" / "runs"  # (the stack's first worker)
    wait_for(lambda: any('"succeeded"' in p.read_text() for p in runs.glob("*.json")),
             what="the run to end on the worker")
    time.sleep(3)  # more than LATE_REPORT (2 s): the controller is back well after the end
    restarted = time.time()
    server.start()
    job = stack.wait_state(job_id)
    assert job["state"] == "succeeded"
    finished = datetime.fromisoformat(job["finished_at"].replace("Z", "+00:00")).timestamp()
    (record,) = runs.glob("*.json")  # the worker's: its last line is the run's end
    ended = json.loads(record.read_text().splitlines()[-1])["finished_at"]
    assert abs(finished - ended) < 0.5, (job, ended)  # (one clock here: the worker's end)
    assert finished < restarted - 2, job


def test_a_start_the_killed_controller_never_saw_confirmed_keeps_its_time(stack):
    """The controller is stopped while the worker reads a changed makefile for a start (1.5 s),
    so the worker starts make and answers, and the controller is killed without having read
    the answer: the job stays claimed. Back 3 s after the build ended, the next controller
    asks the worker: the job's times are make's, not the restart's."""
    ws = stack.workspace(makefile="SLOW_READ := $(shell sleep 1.517)\nquick:\n\t@echo quick\n")
    w = stack.worker(ws)
    server = stack.server([w])
    assert stack.post(json={"target": "quick", "wait": True}).json()["state"] == "succeeded"
    makefile = os.path.join(ws, "Makefile")
    os.utime(makefile, ns=(time.time_ns(), time.time_ns() + 10**9))  # changed: read again
    job_id = stack.trigger("quick")["id"]
    wait_for(lambda: pids_of("sleep 1.517"), what="the worker to read the makefile for the start")
    server.kill(signal.SIGSTOP)
    runs = stack.tmp / "worker0-state" / "runs"
    wait_for(lambda: any(f"-{job_id}-" in p.name and '"succeeded"' in p.read_text()
                         for p in runs.glob("*.json")), what="the build to end on the worker")
    server.kill(signal.SIGKILL)
    with sqlite3.connect(stack.tmp / "trigger.db") as db:  # claimed, its start unconfirmed
        assert db.execute("SELECT state, worker IS NOT NULL FROM jobs WHERE id = ?",
                          (job_id,)).fetchone() == ("queued", 1)
    time.sleep(3)  # more than LATE_REPORT (2 s)
    server.start()
    job = stack.wait_state(job_id)
    (record,) = [p for p in runs.glob("*.json") if f"-{job_id}-" in p.name]
    run = json.loads(record.read_text().splitlines()[-1])  # (one clock here: the worker's)
    assert job["state"] == "succeeded"
    for field in ("started_at", "finished_at"):
        recorded = datetime.fromisoformat(job[field].replace("Z", "+00:00")).timestamp()
        assert abs(recorded - run[field]) < 0.5, (field, job, run)


def test_a_second_controller_on_the_same_database_refuses_to_serve(stack):
    """Two dispatchers on one database started, cancelled and joined jobs behind each other's
    backs (a cancel through one was a 202 that did nothing). The second waits for the first to
    stop, then gives up naming it; the first serves on."""
    w = stack.worker()
    first = stack.server([w])
    second = Proc("trigger_server", {**first.env}, str(stack.tmp / "second.log"))
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="in use by another controller"):
        second.start()
    assert second.proc.returncode == 3 and time.monotonic() - started >= 14
    assert stack.post(json={"target": "ok", "wait": True}).status_code == 200
    first.stop()
    second.start()  # the database is free once its controller stopped
    stack.url = second.url
    assert stack.post(json={"target": "ok", "wait": True}).status_code == 200
    second.stop()


def test_a_controller_waiting_for_the_database_leaves_its_schema_alone(stack):
    """Loading the app adds a newer version's columns to the database: that waits until the
    database is free, or the serving controller would read jobs from a table changed under it
    (a second controller started by mistake, a newer one started before the old one stopped).
    """
    w = stack.worker()
    path = str(stack.tmp / "older.db")
    with Store(path)._tx() as db:  # a database as the version before cancel_requested made it
        db.execute("ALTER TABLE jobs DROP COLUMN cancel_requested")

    def columns() -> set[str]:
        with sqlite3.connect(path) as db:
            return {row[1] for row in db.execute("PRAGMA table_info(jobs)")}

    env = {"TRIGGER_WORKERS": w.url, "TRIGGER_DB": path, "TRIGGER_WORKER_TOKEN": TOKEN}
    held = db_lock.hold(path)  # as the controller serving from it would
    try:
        # gunicorn's --preload loads the app in its master, before any hook: it waits too.
        # A waiting controller stops at once on Ctrl-C, and on the SIGTERM of `docker stop`
        # (to gunicorn's master, which passes it on), without taking the database first.
        early = Proc("trigger_server", env, str(stack.tmp / "early.log"))  # as it boots
        stack.procs.append(early)
        early.start(wait=False)
        wait_for(lambda: "Booting worker" in early.output(), interval=0.005,
                 what="gunicorn to start its worker")
        early.proc.send_signal(signal.SIGTERM)
        early.proc.wait(5)
        preloaded = Proc("trigger_server", {**env, "GUNICORN_CMD_ARGS": "--preload"},
                         str(stack.tmp / "preloaded.log"))
        stopped = Proc("trigger_server", env, str(stack.tmp / "stopped.log"))
        server = Proc("trigger_server", env, str(stack.tmp / "waiting.log"))
        for proc in (preloaded, stopped, server):
            stack.procs.append(proc)
            proc.start(wait=False)
            wait_for(lambda p=proc: "in use by another controller" in p.output(),
                     what="the controller to wait for the database")
        time.sleep(0.5)
        assert "cancel_requested" not in columns()
        assert all(p.proc.poll() is None for p in (preloaded, stopped, server))
        os.killpg(preloaded.proc.pid, signal.SIGINT)
        stopped.proc.send_signal(signal.SIGTERM)
        preloaded.proc.wait(5)
        stopped.proc.wait(5)
        assert "cancel_requested" not in columns()
    finally:
        os.close(held)
    server.wait_ready()
    assert "cancel_requested" in columns()
    stack.url = server.url
    assert stack.post(json={"target": "ok", "wait": True}).json()["state"] == "succeeded"


def test_gunicorn_run_by_hand_on_an_app_without_its_database_lock_refuses_to_serve(stack):
    """`trigger_server:create_app()` opens the database without the lock (serving_app takes
    it): under the package's gunicorn settings it exits 3, saying what to serve instead."""
    conf = os.path.join(os.path.dirname(db_lock.__file__), "gunicorn_conf.py")
    env = {**os.environ, "TRIGGER_WORKERS": "http://127.0.0.1:9", "TRIGGER_WORKER_TOKEN": TOKEN,
           "TRIGGER_DB": str(stack.tmp / "by-hand.db")}
    done = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--config", conf, "--bind", "127.0.0.1:0",
         "trigger_server:create_app()"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 3, done.stderr
    assert "serve trigger_server:serving_app()" in done.stderr


def _waiting_for_a_build(stack) -> tuple[threading.Thread, list, int]:
    """A request that triggers `slow` (30 s) and waits for it, in a thread; its job running."""
    answers: list = []

    def wait():
        try:
            answers.append(stack.post(json={"target": "slow", "wait": 300}))
        except requests.RequestException as exc:
            answers.append(exc)
    thread = threading.Thread(target=wait)
    thread.start()
    job = wait_for(lambda: (jobs := stack.get("/jobs")["jobs"]) and jobs[0], what="the job")
    stack.wait_state(job["id"], "running")
    time.sleep(0.5)
    return thread, answers, job["id"]


def test_a_stopping_controller_answers_its_waiting_requests(stack):
    """SIGTERM: gunicorn waited graceful_timeout (10 s) for the open requests, then cut them
    off without an answer. They are answered at once, with the job as it is."""
    server = stack.server([stack.worker()])
    thread, answers, _ = _waiting_for_a_build(stack)
    started = time.monotonic()
    os.kill(server.proc.pid, signal.SIGTERM)
    thread.join(30)
    assert time.monotonic() - started < 5, answers
    assert answers[0].status_code == 202 and answers[0].json()["state"] == "running", answers
    server.proc.wait(30)
    assert time.monotonic() - started < 8
    assert "Traceback" not in server.output()  # the stop-watch stopped every thread cleanly


def test_a_follow_cut_short_by_a_stopping_controller_does_not_look_ended(stack):
    """`curl -N .../log?follow=1` exited 0 when a controller stopped mid-build, as when the
    job had ended: the body now ends without HTTP's last chunk, and curl says so (exit 18).
    A follow of a job that has ended still ends cleanly."""
    server = stack.server([stack.worker()])
    ended = stack.trigger("ok", wait=True)
    done = subprocess.run(["curl", "-sSN", "--max-time", "20",
                           f"{stack.url}/jobs/{ended['id']}/log?follow=1"],
                          capture_output=True, timeout=30)
    assert done.returncode == 0, done
    job_id = stack.trigger("slow")["id"]
    wait_for(lambda: "start" in stack.log(job_id), what="make to start")
    with subprocess.Popen(["curl", "-sSN", "--max-time", "60",
                           f"{stack.url}/jobs/{job_id}/log?follow=1"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as curl:
        head = b"".join(curl.stdout.readline() for _ in range(3))  # argv, make's folder, start
        assert head.endswith(b"start\n"), head
        os.kill(server.proc.pid, signal.SIGTERM)
        out, err = curl.communicate(timeout=30)
    assert curl.returncode == 18, (curl.returncode, out, err)  # CURLE_PARTIAL_FILE
    assert b"outstanding read data" in err
    server.proc.wait(30)
    assert "Traceback" not in server.output()


def test_a_controller_whose_master_was_killed_frees_the_port_and_database(stack):
    """SIGKILL to the gunicorn master alone: its serving process stayed for as long as a request
    waited (up to TRIGGER_MAX_WAIT), holding the port and the database, so a controller started
    again could not serve."""
    server = stack.server([stack.worker()])
    child = server.children()[0]
    thread, answers, job_id = _waiting_for_a_build(stack)
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    thread.join(30)
    assert answers[0].status_code == 202, answers
    wait_for(lambda: not os.path.exists(f"/proc/{child}"), timeout=10,
             what="the orphaned serving process to exit")
    server.start()  # the same port and database
    assert stack.job(job_id)["state"] == "running"  # followed again


def test_a_job_whose_run_the_worker_forgot_ends_lost_after_a_controller_restart(stack):
    ws = stack.workspace()
    w = stack.worker(ws, name="w")
    server = stack.server([w])
    job_id = stack.trigger("slow")["id"]
    stack.wait_state(job_id, "running")
    server.kill(signal.SIGKILL)
    w.stop()  # SIGTERM: the build is cancelled
    shutil.rmtree(stack.tmp / "w-state")  # a new container: no memory of the run
    w.start()
    server.start()
    job = stack.wait_state(job_id, timeout=10)
    assert job["state"] == "lost" and "no longer knows" in job["error"]


FLAKY = """\
flaky:
\t@if [ -f attempted ]; then echo second attempt; else touch attempted; echo first; sleep 30; fi
fail:
\t@echo failing; exit 1
"""


def test_a_lost_job_with_retries_runs_again_but_a_failed_one_never(stack):
    ws = stack.workspace(makefile=FLAKY)
    w = stack.worker(ws, name="w")
    stack.server([w])
    job_id = stack.trigger("flaky", retries=1)["id"]
    wait_for(lambda: "first" in stack.log(job_id), what="the first attempt to start")
    w.kill(signal.SIGKILL)
    wait_for(lambda: stack.job(job_id)["attempt"] == 1, what="the job to be queued again")
    assert stack.job(job_id)["state"] == "queued"
    w.start()
    job = stack.wait_state(job_id, timeout=20)
    assert job["state"] == "succeeded" and job["attempt"] == 1
    log = stack.log(job_id)
    assert log.index("first") < log.index("attempt 1 lost") < log.index("second attempt")
    failed = stack.post(json={"target": "fail", "retries": 3, "wait": True}).json()
    assert failed["state"] == "failed" and failed["attempt"] == 0


def test_a_database_restored_from_a_backup_does_not_give_a_new_job_an_old_run(stack):
    """A restored database gives its job ids to new jobs again; the worker still has the runs
    of the jobs that had them. A new job's start must not be taken for a repeat of its own (a
    run the worker refuses as `exists`) and report the old build's result and log."""
    import sqlite3

    w = stack.worker(WORKER_VARS="MSG")
    server = stack.server([w])
    db = stack.tmp / "trigger.db"
    backup = stack.tmp / "backup.db"
    with sqlite3.connect(db) as live, sqlite3.connect(backup) as copy:
        live.backup(copy)
    old = stack.post(json={"target": "marker", "vars": {"MSG": "before the restore"},
                           "wait": 10}).json()
    assert old["state"] == "succeeded", old
    assert "before the restore" in stack.log(old["id"])
    server.stop()
    for suffix in ("", "-wal", "-shm"):
        (stack.tmp / f"trigger.db{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, db)
    server.start()
    new = stack.post(json={"target": "fail", "wait": 10}).json()
    assert new["id"] == old["id"]  # the same id again
    assert new["state"] == "failed" and new["exit_code"] == 2, new
    assert "about to fail" in stack.log(new["id"])
    assert "before the restore" not in stack.log(new["id"])


class DroppingProxy:
    """A TCP relay to a worker that can drop everything sent to it (the worker hears nothing,
    as across a network that fails one way), while its answers still come back."""

    def __init__(self, target_port: int):
        import socket

        self.drop = threading.Event()
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import socket

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src, dst, to_worker: bool):
        try:
            while data := src.recv(65536):
                if not (to_worker and self.drop.is_set()):
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(2)
                except OSError:
                    pass

    def close(self):
        self.listener.close()


def test_a_cancel_the_worker_did_not_get_is_delivered_after_a_controller_restart(stack):
    """DELETE answers 202 while the worker cannot be reached (the follower delivers the cancel
    once it can). A controller that restarts meanwhile must still deliver it, not follow the
    build to its end as if no cancel had been asked for."""
    w = stack.worker()
    proxy = DroppingProxy(w.port)
    try:
        server = stack.server([types.SimpleNamespace(url=proxy.url)])
        job_id = stack.trigger("slow", vars={})["id"]
        stack.wait_state(job_id, "running")
        proxy.drop.set()
        resp = stack.http.delete(f"{stack.url}/jobs/{job_id}", timeout=30)
        assert resp.status_code == 202, resp.text
        server.kill(signal.SIGKILL)
        proxy.drop.clear()
        server.start()
        job = stack.wait_state(job_id, timeout=20)
        assert job["state"] == "cancelled", job
        assert "done" not in stack.log(job_id)
    finally:
        proxy.close()
