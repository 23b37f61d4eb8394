"""A cancel that lands while a job's start is on its way to the worker (the hand-over)."""

import threading

import pytest

from trigger_server.dispatch import Dispatcher
from trigger_server.store import JobState, Store
from trigger_server.workers import RunUnknown, Worker, WorkerBusy, WorkerClient, WorkerPool


class HeldStart(WorkerClient):
    """A worker whose answer to a start is held until the test lets it go, then `answer`."""

    def __init__(self, answer: Exception):
        super().__init__("token")
        self.answer = answer
        self.start_sent = threading.Event()
        self.go = threading.Event()

    def start_run(self, worker, run_id, target, variables, timeout):
        self.start_sent.set()
        assert self.go.wait(10)
        raise self.answer

    def cancel_run(self, worker, run_id):
        raise RunUnknown(f"no run {run_id}")  # not started (yet)


@pytest.fixture
def handing_over(tmp_path):
    """A job claimed for a worker, its start sent and not yet answered."""
    def make(answer: Exception):
        store = Store(str(tmp_path / "t.db"))
        client = HeldStart(answer)
        dispatcher = Dispatcher(store, WorkerPool([], client), client)  # never started
        worker = Worker(url="http://w:8000", name="w", configured="http://w:8000")
        job, _ = store.create_job("html", {}, None, "api")
        dispatcher._running[job.id] = (worker, job.target)  # as _claim_ready does
        assert store.claim(job.id, worker.url)
        starting = threading.Thread(target=dispatcher._start, args=(job, worker))
        starting.start()
        assert client.start_sent.wait(10)
        return store, client, dispatcher, job, starting
    return make


def test_a_cancel_during_the_hand_over_does_not_end_the_job_as_not_started(handing_over):
    store, client, dispatcher, job, starting = handing_over(WorkerBusy("locked"))
    assert dispatcher.cancel(job)
    assert store.get_job(job.id).state is JobState.QUEUED  # make may be starting right now
    client.go.set()
    starting.join(10)


@pytest.mark.parametrize("answer", [WorkerBusy("locked"), RunUnknown("refused")])
def test_a_start_the_worker_refused_after_a_cancel_ends_the_job_cancelled(handing_over, answer):
    """Not queued again: the cancel was answered 202."""
    store, client, dispatcher, job, starting = handing_over(answer)
    assert dispatcher.cancel(job)
    client.go.set()
    starting.join(10)
    ended = store.get_job(job.id)
    assert (ended.state, ended.error) == (JobState.CANCELLED, "cancelled before it started")
    assert not dispatcher._running and not dispatcher._cancel
