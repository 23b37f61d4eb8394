"""Cancel and time limits stop the whole build: make and everything it started."""

import os
import subprocess
import threading
import time

import pytest
import requests

from .procs import MAKEFILE, TOKEN, pids_of, wait_for

# The `tree` target's sleeps, by durations nothing else on the machine uses (pgrep sees all).
TREE_SLEEPS = r"^sleep 30[01]\.25$"


def test_cancel_ends_the_whole_process_tree(stack):
    stack.server([stack.worker()])
    job_id = stack.trigger("tree")["id"]
    wait_for(lambda: "tree started" in stack.log(job_id), what="the tree to start")
    assert len(pids_of(TREE_SLEEPS)) >= 2
    resp = requests.delete(f"{stack.url}/jobs/{job_id}", timeout=10)
    assert resp.status_code == 202
    job = stack.wait_state(job_id)
    assert job["state"] == "cancelled"
    assert "cancel" in job["error"]
    wait_for(lambda: not pids_of(TREE_SLEEPS), what="every process of the build to be gone")


def test_a_queued_job_is_cancelled_before_it_starts(stack):
    stack.server([stack.worker()])
    running = stack.trigger("slow")["id"]
    queued = stack.trigger("other")["id"]
    assert stack.job(queued)["state"] == "queued"
    assert requests.delete(f"{stack.url}/jobs/{queued}", timeout=10).status_code == 202
    assert stack.job(queued)["state"] == "cancelled"
    requests.delete(f"{stack.url}/jobs/{running}", timeout=10)
    assert stack.wait_state(running)["state"] == "cancelled"
    again = requests.delete(f"{stack.url}/jobs/{running}", timeout=10)
    assert again.status_code == 409 and "already ended" in again.json()["error"]


def test_a_cancel_during_the_start_never_reports_a_build_that_ran_as_not_started(stack):
    """A DELETE right after the trigger lands while the job is queued, while its start is on
    its way to the worker, or after make started. The job was recorded "cancelled before it
    started" in the second case too, although make ran (and often finished)."""
    makefile = MAKEFILE + "quick:\n\t@touch ran-$(N)\n"
    ws = stack.workspace("quickws", makefile=makefile)
    stack.server([stack.worker(ws, WORKER_VARS="N")])
    jobs = {}
    for n in range(60):
        job = stack.trigger("quick", vars={"N": str(n)})
        cancel = requests.delete(f"{stack.url}/jobs/{job['id']}", timeout=10)
        assert cancel.status_code in (202, 409), cancel.text
        jobs[n] = job["id"]
    time.sleep(1)  # a start on its way has reached make, and make is done
    not_started = 0
    for n, job_id in jobs.items():
        job = stack.wait_state(job_id)
        ran = os.path.exists(os.path.join(ws, f"ran-{n}"))
        if job["error"] == "cancelled before it started":
            not_started += 1
            assert not ran and job["started_at"] is None, job
        else:
            assert ran or job["state"] == "cancelled", job
    assert not_started  # the queued case was exercised too


def test_a_request_waiting_for_a_queued_job_hears_of_its_cancel(stack):
    stack.server([stack.worker()])
    running = stack.trigger("slow")["id"]
    answer = {}
    waiter = threading.Thread(target=lambda: answer.update(
        resp=stack.post(json={"target": "other", "wait": 20})))
    waiter.start()
    queued = wait_for(lambda: [j["id"] for j in stack.get("/jobs")["jobs"] if j["id"] != running],
                      what="the waited-for job to be queued")[0]
    assert requests.delete(f"{stack.url}/jobs/{queued}", timeout=10).status_code == 202
    waiter.join(10)  # well before its 20 s
    assert not waiter.is_alive()
    assert answer["resp"].status_code == 409 and answer["resp"].json()["state"] == "cancelled"
    requests.delete(f"{stack.url}/jobs/{running}", timeout=10)


def test_a_job_over_its_time_limit_fails_with_the_reason(stack):
    stack.server([stack.worker()])
    job_id = stack.trigger("slow", timeout=1)["id"]
    job = stack.wait_state(job_id)
    assert job["state"] == "failed"
    assert job["error"] == "timed out after 1 s"
    assert "timed out" in stack.log(job_id)
    wait_for(lambda: not pids_of("sleep 30$"), what="the timed-out build to be gone")


def test_the_worker_default_time_limit_applies_and_bounds_requests(stack):
    stack.server([stack.worker(WORKER_JOB_TIMEOUT=1)])
    job = stack.wait_state(stack.trigger("slow")["id"])
    assert job["state"] == "failed" and job["error"] == "timed out after 1 s"
    resp = stack.post(json={"target": "slow", "timeout": 5})
    assert resp.status_code == 400 and "at most 1 s" in resp.json()["error"]


@pytest.mark.parametrize("signum", [15, 2, 3], ids=["SIGTERM", "SIGINT", "SIGQUIT"])
def test_a_stop_signal_to_the_worker_cancels_its_build_and_reports_it(stack, signum):
    """SIGTERM is what `docker stop` sends; SIGINT is Ctrl-C (the master passes it on to its
    worker process as SIGQUIT, gunicorn's quick stop), which left the build running."""
    w = stack.worker()
    stack.server([w])
    job_id = stack.trigger("slow")["id"]
    stack.wait_state(job_id, "running")
    wait_for(lambda: "start" in stack.log(job_id), what="make to start")
    make = [int(p) for p in subprocess.run(["pgrep", "-f", "^sleep 30$"], capture_output=True,
                                           text=True).stdout.split()]
    assert make, "the recipe's sleep is not running"
    w.proc.send_signal(signum)
    job = stack.wait_state(job_id)
    assert job["state"] == "cancelled" and job["error"] == "worker shutdown"
    assert w.proc.wait(30) == 0
    for pid in make:  # the recipe's sleep, whose only ancestor left was the worker
        wait_for(lambda pid=pid: not os.path.exists(f"/proc/{pid}"), what=f"{pid} to end")


def test_a_worker_slow_to_stop_says_so_to_health_checks_and_starts(stack):
    """While its builds end (one that ignores SIGTERM keeps it for the kill grace), a stopping
    worker answered its health checks as healthy: the controller kept sending it jobs, whose
    refusals it counted as start failures. It now answers both with 503 "stopping"."""
    ws = stack.workspace("stubborn", "stubborn:\n\t@trap '' TERM; echo started; sleep 30\n"
                                     "ok:\n\t@echo ok\n")
    w = stack.worker(ws, WORKER_LOCK="target", WORKER_KILL_GRACE=6)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    started = requests.post(f"{w.url}/runs", json={"id": "s1", "target": "stubborn"},
                            headers=auth, timeout=10)
    assert started.status_code == 201, started.text
    w.proc.send_signal(15)
    wait_for(lambda: requests.get(f"{w.url}/healthz", headers=auth, timeout=5).status_code
             == 503, what="the health check to say the worker is stopping")
    health = requests.get(f"{w.url}/healthz", headers=auth, timeout=5)
    assert health.json() == {"error": "the worker is shutting down", "reason": "stopping"}
    refused = requests.post(f"{w.url}/runs", json={"id": "o1", "target": "ok"}, headers=auth,
                            timeout=10)
    assert (refused.status_code, refused.json()["reason"]) == (503, "stopping")
    assert w.proc.wait(30) == 0
