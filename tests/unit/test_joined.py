"""The answers to triggers that join a queued job, made once per job."""

import json

from flask import Flask

from trigger_server.joined import JoinedAnswers
from trigger_server.store import Job, JobState


def queued(job_id=7, attempt=0, log_size=0):
    return Job(id=job_id, target="site", vars={"N": "1"}, selector=None, worker=None,
               state=JobState.QUEUED, exit_code=None, error=None, source="api", timeout=None,
               created_at=1796500000.0, started_at=None, finished_at=None, log_size=log_size,
               log_truncated=False, attempt=attempt, retries=2, log_base=log_size)


def test_the_answer_is_the_job_with_coalesced_true():
    with Flask(__name__).app_context():
        resp = JoinedAnswers().answer(queued())
        assert resp.status_code == 202 and resp.headers["Location"] == "/jobs/7"
        assert resp.mimetype == "application/json"
        assert json.loads(resp.get_data()) == {**queued().to_dict(), "coalesced": True}


def test_a_job_queued_again_by_a_retry_is_answered_as_it_is_now():
    """A lost attempt's retry queues the job again with a new attempt and a longer log: the
    answer kept for the first attempt does not do for it."""
    with Flask(__name__).app_context():
        answers = JoinedAnswers()
        answers.answer(queued())
        again = queued(attempt=1, log_size=80)
        assert json.loads(answers.answer(again).get_data()) == {**again.to_dict(),
                                                                 "coalesced": True}


def test_only_the_newest_answers_are_kept():
    with Flask(__name__).app_context():
        answers = JoinedAnswers(keep=2)
        for job_id in (1, 2, 3):
            answers.answer(queued(job_id))
        assert sorted(key[0] for key in answers._bodies) == [2, 3]
