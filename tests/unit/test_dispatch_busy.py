"""A worker that refuses a start as busy (its lock is held by a build this controller did not
start: another stack's, a replica's, one from outside) is asked again after BUSY_BACKOFF. With
WORKER_LOCK=target that lock was one target's: the worker goes on building the others."""

import time

import pytest

from trigger_server import dispatch
from trigger_server.dispatch import Dispatcher
from trigger_server.store import JobState, Store
from trigger_server.workers import Worker, WorkerBusy, WorkerClient, WorkerPool, WorkerStopping


class LockedTarget(WorkerClient):
    """A worker on which `locked` is being built by someone else: its starts are refused."""

    def __init__(self, locked: str):
        super().__init__("token")
        self.locked = locked

    def start_run(self, worker, run_id, target, variables, timeout):
        assert target == self.locked, "only the locked target is started in these tests"
        raise WorkerBusy(f"the target {target} is being built by another build")


@pytest.fixture
def refused(tmp_path):
    """A dispatcher (never started) whose one worker, locking `lock`, refused `slow`."""
    def make(lock: str):
        store = Store(str(tmp_path / "t.db"))
        client = LockedTarget("slow")
        pool = WorkerPool([], client)
        worker = Worker(url="http://w:8000", name="w", configured="http://w:8000",
                        healthy=True, lock=lock)
        pool._workers[worker.url] = worker
        dispatcher = Dispatcher(store, pool, client)
        job, _ = store.create_job("slow", {}, None, "api")
        claimed = list(dispatcher._claim_ready())
        assert [j.id for j, _ in claimed] == [job.id]
        assert dispatcher._start(job, worker) == (False, None)
        dispatcher._release(job, worker, ran=False)
        again = store.get_job(job.id)
        assert again.state is JobState.QUEUED and again.worker is None
        return store, dispatcher, pool, worker
    return make


def test_a_worker_locking_targets_builds_the_others_while_one_is_refused(refused):
    store, dispatcher, pool, worker = refused("target")
    assert pool.pick(None, "slow") is None  # asked again after BUSY_BACKOFF, not at once
    assert pool.pick(None, "html") is worker
    assert pool.has_room()
    html, _ = store.create_job("html", {}, None, "api")
    assert [j.id for j, _ in dispatcher._claim_ready()] == [html.id]


def test_a_worker_locking_its_workspace_is_refused_for_every_target(refused):
    store, dispatcher, pool, worker = refused("workspace")
    assert pool.pick(None, "slow") is None and pool.pick(None, "html") is None
    assert not pool.has_room()


@pytest.mark.parametrize("lock", ["target", "workspace"])
def test_the_refused_target_is_asked_again_after_the_back_off(refused, lock, monkeypatch):
    store, dispatcher, pool, worker = refused(lock)
    later = time.monotonic() + dispatch.BUSY_BACKOFF + 0.01
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert pool.pick(None, "slow") is worker


def test_a_job_that_ran_lifts_the_back_off(refused):
    """What held the lock may have been that job (or its make's children)."""
    store, dispatcher, pool, worker = refused("target")
    html, _ = store.create_job("html", {}, None, "api")
    ((job, picked),) = dispatcher._claim_ready()
    dispatcher._release(job, picked, ran=True)
    assert pool.pick(None, "slow") is worker


def test_the_later_jobs_of_a_refused_target_are_skipped_in_sql(refused, monkeypatch):
    """A pass does not read a long queue of a target no worker takes now, page by page."""
    store, dispatcher, pool, worker = refused("target")
    for n in range(3):
        store.create_job("slow", {"N": str(n)}, None, "api")
    html, _ = store.create_job("html", {}, None, "api")
    skipped = []
    read = store.dispatchable

    def spy(after=0, limit=200, skip_targets=()):
        skipped.append(set(skip_targets))
        return read(after=after, limit=min(limit, 2), skip_targets=skip_targets)
    monkeypatch.setattr(store, "dispatchable", spy)
    assert [j.id for j, _ in dispatcher._claim_ready()] == [html.id]
    assert "slow" in skipped[1]


class Stopping(WorkerClient):
    def __init__(self):
        super().__init__("token")

    def start_run(self, worker, run_id, target, variables, timeout):
        raise WorkerStopping(f"worker {worker.url}: the worker is shutting down")


def test_a_worker_shutting_down_is_not_the_jobs_failure(tmp_path):
    """A worker that takes long to stop (a build slow to end) still answered its health
    checks: each refused start counted towards MAX_START_FAILURES, and a job that never ran
    ended `failed` after five (and its failure notification went out)."""
    store = Store(str(tmp_path / "t.db"))
    client = Stopping()
    pool = WorkerPool([], client)
    worker = Worker(url="http://w:8000", name="w", configured="http://w:8000", healthy=True,
                    lock="target")
    pool._workers[worker.url] = worker
    dispatcher = Dispatcher(store, pool, client)
    job, _ = store.create_job("html", {}, None, "api")
    for _ in range(dispatch.MAX_START_FAILURES + 1):
        worker.healthy = True  # as a health check that came between would have it
        ((claimed, picked),) = dispatcher._claim_ready()
        assert dispatcher._start(claimed, picked) == (False, None)
        dispatcher._release(claimed, picked, ran=False)
        assert not worker.healthy and "shutting down" in worker.last_error
    again = store.get_job(job.id)
    assert again.state is JobState.QUEUED and again.worker is None
