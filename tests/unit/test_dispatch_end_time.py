"""How long before its answer a worker says a run started or ended, or its files changed: by
the worker's clock alone (another host's may differ); a controller that finds a run its
predecessor started (or ended) while nobody followed it keeps those times, not the time it came
back; and a file change is compared with the builds on the controller's clock."""

import time

import pytest

from trigger_server.dispatch import Dispatcher, changed_here, ended_ago, started_ago
from trigger_server.store import JobState, Store
from trigger_server.workers import Worker, WorkerClient, WorkerPool


def test_the_age_of_an_end_is_the_workers_now_minus_its_finished_at():
    # a worker whose clock is an hour off: only the difference of its two times counts
    assert ended_ago({"finished_at": 1_000.5, "now": 1_010.0}) == 9.5
    assert ended_ago({"finished_at": 1_000, "now": 1_003}) == 3.0
    assert started_ago({"started_at": 990, "finished_at": 1_000, "now": 1_003}) == 13.0


def test_an_answer_without_both_times_or_with_nonsense_gives_no_age():
    for run in ({"finished_at": 1.0}, {"now": 2.0}, {"finished_at": None, "now": 2.0},
                {"finished_at": "1", "now": 2.0}, {"finished_at": True, "now": 2.0},
                {"finished_at": 1.0, "now": float("inf")}, {"finished_at": 1.0, "now": 10**400}):
        assert ended_ago(run) is None, run
        assert started_ago({**run, "started_at": run.get("finished_at")}) is None, run


class EndedLongAgo(WorkerClient):
    """A worker whose clock is a day ahead, on which the run started 100 s and ended 40 s
    before the controller asks."""

    def __init__(self):
        super().__init__("token")
        self.asked: list[str] = []

    def _run(self, run_id: str) -> dict:
        now = time.time() + 86_400
        return {"id": run_id, "state": "succeeded", "exit_code": 0, "log_size": 0,
                "started_at": now - 100, "finished_at": now - 40, "now": now}

    def get_run(self, worker, run_id):
        self.asked.append(run_id)
        return self._run(run_id)

    def follow(self, worker, run_id, offset):
        yield self._run(run_id)


def test_a_start_the_killed_controller_never_saw_confirmed_keeps_its_time(tmp_path):
    store = Store(str(tmp_path / "t.db"))
    job, _ = store.create_job("html", {}, None, "api")
    assert store.claim(job.id, "http://w:8000")  # ... and the controller was killed
    with store._tx() as db:  # (made before the run started)
        db.execute("UPDATE jobs SET created_at = created_at - 3600")
    client = EndedLongAgo()
    pool = WorkerPool([], client)
    worker = Worker(url="http://w:8000", name="w", configured="http://w:8000", healthy=True)
    pool._workers[worker.url] = worker
    dispatcher = Dispatcher(store, pool, client)  # the next controller (its threads not started)
    before = time.time()
    dispatcher._run(store.get_job(job.id), worker, "recover")
    ended = store.get_job(job.id)
    assert client.asked == [store.run_id(job)]
    assert ended.state is JobState.SUCCEEDED
    assert before - 100 <= ended.started_at <= time.time() - 100
    assert before - 40 <= ended.finished_at <= time.time() - 40


def test_a_file_change_is_placed_on_the_controllers_clock():
    now = time.time()
    ahead = changed_here({"changed_at": now + 3600 - 5, "now": now + 3600})
    assert now - 5 <= ahead <= time.time() - 5
    assert changed_here({"changed_at": 1_000.0}) == 1_000.0  # an older worker: as it is
    future = changed_here({"changed_at": now + 10, "now": now})  # a clock stepped back
    assert now <= future <= time.time()
    assert changed_here({"changed_at": "soon", "now": now}) is None
    # a worker's own monotonic age comes first (a wall clock stepped meanwhile: no matter)
    told = changed_here({"changed_at": now - 3600, "now": now, "changed_ago": 7.0})
    assert now - 7 <= told <= time.time() - 7


@pytest.mark.parametrize(("worker_clock", "builds"), [(3600, 1), (-3600, 2)])
def test_replicas_on_hosts_whose_clocks_differ_build_each_edit_once(tmp_path, worker_clock,
                                                                    builds):
    """A build of `lesson` started 2 s ago. A replica reports an edit: made 5 s ago, it is
    that build's (no new one); made 1 s ago, it needs a build. The replica's clock is an hour
    ahead (its changed_at looked later than the build's start: a second build) or behind (it
    looked older: the edit was never built)."""
    store = Store(str(tmp_path / "t.db"))
    pool = WorkerPool([], WorkerClient("token"))
    dispatcher = Dispatcher(store, pool, pool.client)  # (its threads not started)
    running, _ = store.create_job("lesson", {}, "w", "watch")
    assert store.claim(running.id, "http://w:8000") and store.mark_running(running.id)
    with store._tx() as db:
        db.execute("UPDATE jobs SET started_at = ?, created_at = ?",
                   (time.time() - 2, time.time() - 3))
    worker = Worker(url="http://w:8000", name="w", configured="http://w:8000", healthy=True)
    worker_now = time.time() + worker_clock
    age = 5 if builds == 1 else 1
    dispatcher._watched(worker, {"target": "lesson", "paths": ["src/a.Rmd"],  # (no changed_ago:
                                 "changed_at": worker_now - age, "now": worker_now})  # older)
    assert len(store.list_jobs()) == builds
