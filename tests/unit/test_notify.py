"""Notifications to a real local HTTP receiver: when, what, and retries."""

import pytest

from tests.receiver import Receiver
from trigger_server.notify import Notifier, describe
from trigger_server.store import JobState, Store


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "t.db"))


def ended(store, target, state, error=None):
    job, _ = store.create_job(target, {"N": str(len(store.list_jobs()))}, None, "api")
    store.finish(job.id, state, 2 if state is JobState.FAILED else 0, error)
    return store.get_job(job.id)


def test_failures_are_posted_with_a_slack_text(store, receiver):
    notifier = Notifier(store, receiver.url, "failure", delays=())
    notifier.job_ended(ended(store, "site", JobState.SUCCEEDED))
    job = ended(store, "site", JobState.FAILED, "make ended with exit status 2")
    notifier.job_ended(job)
    (got,) = receiver.wait(1)
    assert got["json"]["id"] == job.id and got["json"]["state"] == "failed"
    assert got["json"]["text"] == describe(job)
    assert "job" in got["json"]["text"] and "exit status 2" in got["json"]["text"]


def test_change_notifies_only_when_the_result_differs(store, receiver):
    notifier = Notifier(store, receiver.url, "change", delays=())
    states = [JobState.SUCCEEDED, JobState.SUCCEEDED, JobState.FAILED, JobState.FAILED,
              JobState.SUCCEEDED]
    for state in states:
        notifier.job_ended(ended(store, "site", state))
    got = receiver.wait(2)
    assert [g["json"]["state"] for g in got] == ["failed", "succeeded"]


def test_a_failed_delivery_is_retried(store):
    flaky = Receiver(statuses=[500, 503])
    try:
        notifier = Notifier(store, flaky.url, "always", delays=(0.05, 0.05, 0.05))
        job = ended(store, "site", JobState.SUCCEEDED)
        assert notifier.deliver(flaky.url, {**job.to_dict(), "text": "x"})
        assert [g["status"] for g in flaky.received] == [500, 503, 200]
    finally:
        flaky.close()


def test_a_refused_delivery_is_not_retried(store):
    refusing = Receiver(statuses=[404])
    try:
        notifier = Notifier(store, refusing.url, "always", delays=(0.05,))
        assert not notifier.deliver(refusing.url, {"id": 1})
        assert len(refusing.received) == 1
    finally:
        refusing.close()
