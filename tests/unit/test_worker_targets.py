"""WorkerPool's lists of the workers' targets: how long a trigger waits for one, when an older
one is trusted, and that one listing serves every trigger waiting for it. The worker is a
stand-in that answers from a list and can be held or made to fail; the real thing (a makefile
slow to list, a webhook delivery) is in tests/integration/test_webhooks.py."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from trigger_server import workers
from trigger_server.workers import Worker, WorkerError, WorkerPool

URL = "http://worker:8000"


class Lister:
    """Answers `targets` with `names`, counting calls; held while `hold` is clear."""

    def __init__(self, *names: str):
        self.names = list(names)
        self.calls = 0
        self.hold = threading.Event()
        self.hold.set()
        self.fail: Exception | None = None

    def targets(self, worker: Worker) -> tuple[list[dict], bool]:
        self.calls += 1
        assert self.hold.wait(10), "the test never let the listing go"
        if self.fail is not None:
            raise self.fail
        return [{"name": n, "description": ""} for n in self.names], self.stale

    stale = False


@pytest.fixture
def lister():
    return Lister("site")


@pytest.fixture
def pool(lister, monkeypatch):
    monkeypatch.setattr(workers, "TARGETS_TTL", 0.2)
    monkeypatch.setattr(workers, "TARGETS_WAIT", 0.3)
    monkeypatch.setattr(workers, "TARGETS_STALE", 1.0)
    pool = WorkerPool([URL], lister)  # never started: the worker is put in by hand
    pool._workers[URL] = Worker(url=URL, name="worker", configured=URL, healthy=True)
    yield pool
    lister.hold.set()
    pool.stop()


def wait_until(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_fresh_list_answers_for_a_target_it_has_without_asking_again(pool, lister):
    assert pool.lacks_target(None, "site") is None
    assert pool.targets() == [{"name": "site", "description": ""}]
    assert lister.calls == 1


def test_a_target_the_list_lacks_is_asked_for_again_as_it_may_have_been_added(pool, lister):
    """A makefile edited and then triggered at once: a list a second old must not refuse."""
    assert pool.lacks_target(None, "site") is None
    assert "target nope is not a target" in pool.lacks_target(None, "nope")
    assert lister.calls == 2
    lister.names.append("added")
    assert pool.lacks_target(None, "added") is None
    assert lister.calls == 3


def test_a_list_the_worker_calls_stale_refuses_nothing(pool, lister):
    """The worker kept a list from before its makefile changed (a build held the workspace):
    the worker itself decides when the job starts."""
    lister.stale = True
    assert pool.lacks_target(None, "nope") is None
    assert pool.targets() == [{"name": "site", "description": ""}]
    assert pool.lacks_target(None, "site") is None
    assert lister.calls == 1  # kept, for the targets it has: not a worker call a trigger


def test_a_slow_listing_lets_triggers_through_after_the_wait_and_runs_once(pool, lister):
    lister.hold.clear()
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(pool.lacks_target(None, "nope")))
               for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert answers == [None] * 5  # not refused: the worker checks when the job starts
    assert lister.calls == 1
    lister.hold.set()
    wait_until(lambda: not pool._listing)
    assert "not a target" in pool.lacks_target(None, "nope")  # the list came after all
    assert lister.calls == 2  # (a target a list lacks is asked for once more)


def test_an_older_list_that_has_the_target_answers_at_once_and_is_renewed(pool, lister,
                                                                          monkeypatch):
    monkeypatch.setattr(workers, "TARGETS_WAIT", 30)
    assert pool.lacks_target(None, "site") is None
    time.sleep(0.25)  # older than TARGETS_TTL
    lister.names = ["docs"]  # `site` was taken out of the makefile
    lister.hold.clear()
    started = time.monotonic()
    assert pool.lacks_target(None, "site") is None
    assert time.monotonic() - started < 10  # not held until the listing ends (30 s)
    lister.hold.set()
    wait_until(lambda: lister.calls == 2 and not pool._listing)
    assert "target site is not a target" in pool.lacks_target(None, "site")
    assert pool.lacks_target(None, "docs") is None
    assert lister.calls == 3  # the refusal asked once more; `docs` came from the new list


def test_an_older_list_without_the_target_waits_for_the_new_one(pool, lister):
    assert "not a target" in pool.lacks_target(None, "docs")
    time.sleep(0.25)
    lister.names = ["site", "docs"]  # added since
    assert pool.lacks_target(None, "docs") is None
    assert lister.calls == 2


def test_a_list_past_TARGETS_STALE_is_not_trusted_even_for_a_target_it_has(pool, lister,
                                                                           monkeypatch):
    monkeypatch.setattr(workers, "TARGETS_STALE", 0.2)
    assert pool.lacks_target(None, "site") is None
    time.sleep(0.25)
    lister.names = ["docs"]
    assert "target site is not a target" in pool.lacks_target(None, "site")
    assert lister.calls == 2


@pytest.mark.parametrize("error", [WorkerError("worker answered 500"), KeyError("targets")])
def test_a_failed_listing_lets_the_trigger_through_is_logged_and_tried_again(pool, lister,
                                                                             error, caplog):
    lister.fail = error
    with caplog.at_level(logging.WARNING, logger="trigger_server.workers"):
        assert pool.lacks_target(None, "nope") is None
        wait_until(lambda: not pool._listing)
    assert "targets" in caplog.text
    lister.fail = None
    assert "not a target" in pool.lacks_target(None, "nope")
    assert lister.calls == 2


def test_a_stopped_pool_lists_nothing_more(pool, lister):
    assert pool.lacks_target(None, "site") is None
    pool.stop()
    time.sleep(0.25)  # the list is older than TARGETS_TTL
    assert pool.lacks_target(None, "nope") is None  # accepted: no list to check it against
    assert pool.targets() is None
    assert lister.calls == 1
