"""What a crash costs: a worker killed mid-build loses that job, not the controller; the
controller's restart keeps the history."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.docker


def test_a_killed_worker_loses_its_job_and_the_controller_stays_healthy(fresh):
    job = fresh.post_job("check-titles").json()
    fresh.wait_for_job(job["id"], ("running",))
    worker = fresh.container("worker")

    worker.kill()
    killed = time.monotonic()

    lost = fresh.wait_for_job(job["id"], timeout=30)
    assert lost["state"] == "lost", lost
    assert time.monotonic() - killed < 15
    assert fresh.get("/healthz").status_code == 200
    assert fresh.health(fresh.container("controller")) == "healthy"


def test_a_worker_brought_back_with_compose_up_builds_again(fresh):
    fresh.container("worker").kill()

    fresh.compose("up", "-d", "worker")
    fresh.wait_healthy(1)

    job = fresh.post_job("site", wait=True).json()
    assert job["state"] == "succeeded", fresh.describe()


def test_the_history_survives_a_restart_of_the_controller(fresh):
    before = fresh.post_job("stats", wait=True).json()

    fresh.container("controller").restart(timeout=20)
    fresh.wait_healthy(1)

    after = fresh.job(before["id"])
    assert after["state"] == "succeeded"
    assert after["finished_at"] == before["finished_at"]
    log = fresh.get(f"/jobs/{before['id']}/log").text
    assert "stats: ok" in log


def test_stopping_a_worker_cancels_its_build_and_reports_it_in_time(fresh):
    job = fresh.post_job("check-titles").json()
    fresh.wait_for_job(job["id"], ("running",))

    started = time.monotonic()
    fresh.compose("stop", "worker")
    stopping = time.monotonic() - started

    ended = fresh.job(job["id"])
    assert ended["state"] == "cancelled", ended
    assert ended["error"] == "worker shutdown"
    assert stopping < 20  # well inside stop_grace_period: no SIGKILL needed
    assert all(c.attrs["State"]["ExitCode"] == 0 for c in fresh.containers("worker", all=True))


def test_a_network_cut_loses_the_running_job_holds_the_queue_and_heals(fresh):
    job = fresh.post_job("check-titles").json()
    fresh.wait_for_job(job["id"], ("running",))
    worker = fresh.container("worker")
    network = fresh.client.networks.get(f"{fresh.project}_default")

    network.disconnect(worker)
    try:
        lost = fresh.wait_for_job(job["id"], timeout=30)
        assert lost["state"] == "lost", lost
        assert not any(w["healthy"] for w in fresh.get("/workers").json()["workers"])
        waiting = fresh.post_job("stats").json()
        time.sleep(2)
        assert fresh.job(waiting["id"])["state"] == "queued"  # waits for a worker
    finally:
        network.connect(worker, aliases=["worker"])  # compose's service-name alias
    done = fresh.wait_for_job(waiting["id"], timeout=60)
    assert done["state"] == "succeeded", fresh.describe()
    assert fresh.get("/healthz").status_code == 200
