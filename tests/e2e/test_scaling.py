"""`--scale worker=3`: three containers on one workspace. With WORKER_LOCK=target three
different targets build at the same time, one per container; with the default workspace lock
they take turns."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

pytestmark = pytest.mark.docker

TARGETS = ("check-titles", "check-links", "stats")  # each takes a few seconds
# The controller notes a job's end when it hears of it, a moment after make has ended and
# released the workspace to the next build: builds that take turns may seem to overlap by that
# much, builds that run together overlap by seconds.
LAG = timedelta(seconds=0.5)


def run_three(stack) -> list[dict]:
    ids = [stack.post_job(target).json()["id"] for target in TARGETS]
    return [stack.wait_for_job(job_id, timeout=90) for job_id in ids]


def interval(job: dict) -> tuple[datetime, datetime]:
    return (datetime.fromisoformat(job["started_at"]),
            datetime.fromisoformat(job["finished_at"]))


def test_three_workers_build_three_targets_at_once_with_target_locks(stack):
    stack.up(workers=3, WORKER_LOCK="target")

    jobs = run_three(stack)

    assert [j["state"] for j in jobs] == ["succeeded"] * 3, stack.describe()
    assert len({j["worker"] for j in jobs}) == 3
    spans = [interval(j) for j in jobs]
    assert max(start for start, _ in spans) < min(end for _, end in spans), spans


def test_without_target_locks_three_workers_take_turns(stack):
    stack.up(workers=3)

    jobs = run_three(stack)

    assert [j["state"] for j in jobs] == ["succeeded"] * 3, stack.describe()
    spans = sorted(interval(j) for j in jobs)
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end - start < LAG, spans
