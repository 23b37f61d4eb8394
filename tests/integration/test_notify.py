"""A controller notifies a real receiver when jobs end."""

import pytest

from tests.receiver import Receiver


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_a_failed_build_is_posted_to_the_notify_url(stack, receiver):
    stack.server([stack.worker()], TRIGGER_NOTIFY_URL=receiver.url + "/hook")
    stack.post(json={"target": "ok", "wait": True})
    failed = stack.post(json={"target": "fail", "wait": True}).json()
    (got,) = receiver.wait(1)
    assert got["path"] == "/hook"
    assert got["json"]["id"] == failed["id"] and got["json"]["exit_code"] == 2
    assert "failed" in got["json"]["text"]


def test_a_job_can_name_its_own_notify_url(stack, receiver):
    stack.server([stack.worker()], TRIGGER_NOTIFY_ON="always")
    job = stack.post(json={"target": "ok", "wait": True, "notify": receiver.url}).json()
    (got,) = receiver.wait(1)
    assert got["json"]["id"] == job["id"] and got["json"]["state"] == "succeeded"
    bad = stack.post(json={"target": "ok", "notify": "file:///etc/passwd"})
    assert bad.status_code == 400 and "notify" in bad.json()["error"]
