"""How long before its answer a worker says a run started or ended: by the worker's clock
alone; and a controller that finds a run its predecessor started (or ended) while nobody
followed it keeps those times, not the time it came back."""

import time

from trigger_server.dispatch import Dispatcher, ended_ago, started_ago
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
