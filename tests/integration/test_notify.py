"""A controller notifies a real receiver when jobs end, even across a kill."""

import signal

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
    for url in ("file:///etc/passwd", "http://[::1", "http://"):
        bad = stack.post(json={"target": "ok", "notify": url})
        assert bad.status_code == 400 and "notify" in bad.json()["error"], url


def test_a_notification_survives_a_killed_controller(stack):
    """The controller is killed while the receiver holds its POST unanswered; the controller
    started again on the same database sends it again."""
    receiver = Receiver(hold=1)
    try:
        worker = stack.worker()
        server = stack.server([worker], TRIGGER_NOTIFY_URL=receiver.url)
        failed = stack.post(json={"target": "fail", "wait": True}).json()
        (first,) = receiver.wait(1)
        assert first["json"]["id"] == failed["id"]
        server.kill(signal.SIGKILL)  # the POST is still unanswered: nothing was recorded
        receiver.release()
        stack.server([worker])
        got = receiver.wait(2)
        assert len(got) == 2 and got[1]["status"] == 200
        assert got[1]["json"]["id"] == failed["id"] and got[1]["json"]["state"] == "failed"
    finally:
        receiver.close()
