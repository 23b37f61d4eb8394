"""A cancel that lands while a job's start is on its way to the worker (the hand-over)."""

import threading

import pytest

from trigger_server import workers
from trigger_server.dispatch import Dispatcher
from trigger_server.store import JobState, Store, StoreError
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


# --- the bookkeeping around a claim, a refused start and a retry (review of the above) -------
class NoRuns(WorkerClient):
    def __init__(self):
        super().__init__("token")

    def cancel_run(self, worker, run_id):
        raise RunUnknown(f"no run {run_id}")


def _worker(name: str) -> Worker:
    return Worker(url=f"http://{name}:8000", name=name, configured=f"http://{name}:8000",
                  healthy=True)


@pytest.fixture
def idle(tmp_path):
    """A dispatcher that is never started, with worker `a` in its pool (and `b` at hand)."""
    store = Store(str(tmp_path / "t.db"))
    client = NoRuns()
    pool = WorkerPool([], client)
    a = _worker("a")
    pool._workers[a.url] = a
    return store, Dispatcher(store, pool, client), a, _worker("b")


def test_a_claim_the_database_refused_leaves_the_job_waiting_and_its_target_free(idle,
                                                                                 monkeypatch):
    store, dispatcher, a, _ = idle
    job, _ = store.create_job("html", {}, None, "api")

    def locked(job_id, worker):
        raise StoreError("database unavailable: database is locked")
    monkeypatch.setattr(store, "claim", locked)
    assert list(dispatcher._dispatch_logged() or []) == []  # logged, not raised
    assert dispatcher.running_jobs() == {}  # no phantom run holding `html` busy
    assert [j.id for j in store.dispatchable()] == [job.id]


def test_a_follower_letting_go_late_leaves_a_newer_assignment_alone(idle):
    """A's start was refused (busy) and the job went back to the queue; B claimed it before
    A's follower let go of it."""
    store, dispatcher, a, b = idle
    job, _ = store.create_job("html", {}, None, "api")
    dispatcher._running[job.id] = (a, job.target)
    assert store.claim(job.id, a.url)
    dispatcher._unclaim(job, a)
    dispatcher._running[job.id] = (b, job.target)
    assert store.claim(job.id, b.url)
    dispatcher._release(job, a)
    assert dispatcher.running_jobs() == {job.id: b.url}
    assert dispatcher.cancel(job)  # found: B's follower sends it once the run started
    assert dispatcher._cancel == {job.id}


def test_a_lost_job_cancelled_before_its_retry_is_not_run_again(idle):
    store, dispatcher, a, _ = idle
    job, _ = store.create_job("html", {}, None, "api", retries=1)
    dispatcher._running[job.id] = (a, job.target)
    assert store.claim(job.id, a.url) and store.mark_running(job.id)
    assert dispatcher.cancel(job)
    dispatcher._end(job.id, JobState.LOST, error="worker gone")
    dispatcher._release(job, a)
    assert store.get_job(job.id).state is JobState.LOST


def test_a_cancel_while_a_lost_job_waits_to_run_again_ends_it(idle):
    store, dispatcher, a, _ = idle
    job, _ = store.create_job("html", {}, None, "api", retries=1)
    dispatcher._running[job.id] = (a, job.target)
    assert store.claim(job.id, a.url) and store.mark_running(job.id)
    dispatcher._end(job.id, JobState.LOST, error="worker gone")  # queued again (retries)
    assert store.get_job(job.id).state is JobState.QUEUED
    assert dispatcher.cancel(job)  # before the follower let go of it
    dispatcher._release(job, a)
    ended = store.get_job(job.id)
    assert (ended.state, ended.error) == (JobState.CANCELLED, "cancelled before it started")
    assert store.dispatchable() == []


def test_a_cancel_recorded_before_the_claim_ends_the_job_at_the_next_controllers_start(
        tmp_path):
    """A DELETE that lands while the job is being claimed (in `_running`, the claim not yet
    committed) is recorded with the worker still unset. A controller killed then must not
    run the job after its restart: the claim refuses it, and the restart ends it cancelled."""
    store = Store(str(tmp_path / "t.db"))
    job, _ = store.create_job("html", {}, None, "api")
    other, _ = store.create_job("pdf", {}, None, "api")
    store.request_cancel(job.id)
    assert store.get_job(job.id).cancel_requested and store.get_job(job.id).worker is None
    assert not store.claim(job.id, "http://w:8000")  # as the next dispatch would try
    client = NoRuns()
    dispatcher = Dispatcher(store, WorkerPool([], client), client)
    dispatcher.recover()
    ended = store.get_job(job.id)
    assert (ended.state, ended.error) == (JobState.CANCELLED, "cancelled before it started")
    assert store.get_job(other.id).state is JobState.QUEUED  # only that one
    assert not dispatcher._cancel


def test_a_restart_follows_every_claimed_job_however_long_the_queue_before_it(tmp_path):
    """recover() read the 1,000 oldest queued jobs only: a job claimed (its start sent) behind
    a longer queue was never followed again, and stayed `queued` with its worker for ever (a
    cancel answered 503 "changing hands" on every try)."""
    store = Store(str(tmp_path / "t.db"))
    for n in range(1001):
        store.create_job("html", {"N": str(n)}, "http://other:8000", "api")
    job, _ = store.create_job("pdf", {}, None, "api")
    assert store.claim(job.id, "http://w:8000")  # the controller was killed after this
    client = NoRuns()
    pool = WorkerPool([], client)
    worker = _worker("w")
    pool._workers[worker.url] = worker
    dispatcher = Dispatcher(store, pool, client)
    followed = []
    dispatcher._followers.submit = lambda fn, job, worker, how: followed.append((job.id, how))
    dispatcher.recover()
    assert followed == [(job.id, "recover")]
    assert dispatcher.running_jobs() == {job.id: worker.url}


class LostAnswer(WorkerClient):
    """A start whose answer is lost (a read timeout), on a worker that then answers twice that
    the start is still under way, and then has the run."""

    def __init__(self):
        super().__init__("token")
        self.asked = 0

    def start_run(self, worker, run_id, target, variables, timeout):
        raise workers.WorkerError(f"worker {worker.url} did not answer: timed out",
                                  uncertain=True)

    def get_run(self, worker, run_id):
        self.asked += 1
        if self.asked <= 2:
            raise workers.WorkerError(f"worker {worker.url}: run {run_id} is being started; "
                                      "ask again")
        return {"id": run_id, "state": "running"}


def test_a_start_still_under_way_on_its_worker_is_asked_about_again_not_moved(tmp_path):
    """Asked once after a lost answer, a worker still checking the start (a slow makefile)
    had the job either ended `lost` or, answering "unknown", started on another worker too.
    The controller now asks again while the worker says the start is under way."""
    from trigger_server import dispatch

    store = Store(str(tmp_path / "t.db"))
    client = LostAnswer()
    pool = WorkerPool([], client)
    worker = _worker("w")
    pool._workers[worker.url] = worker
    dispatcher = Dispatcher(store, pool, client)
    dispatcher._stop.wait = lambda seconds: False  # (no pause between the questions)
    job, _ = store.create_job("html", {}, None, "api")
    ((claimed, picked),) = dispatcher._claim_ready()
    assert dispatch.START_ASK > 2
    started, events = dispatcher._start(claimed, picked)
    assert started and events is None  # followed from its log, as a start without a stream
    assert client.asked == 3
    assert store.get_job(job.id).state is JobState.RUNNING
