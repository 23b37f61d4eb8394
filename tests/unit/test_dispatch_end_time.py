"""How long before its answer a worker says a run ended: by the worker's clock alone."""

from trigger_server.dispatch import ended_ago


def test_the_age_of_an_end_is_the_workers_now_minus_its_finished_at():
    # a worker whose clock is an hour off: only the difference of its two times counts
    assert ended_ago({"finished_at": 1_000.5, "now": 1_010.0}) == 9.5
    assert ended_ago({"finished_at": 1_000, "now": 1_003}) == 3.0


def test_an_answer_without_both_times_or_with_nonsense_gives_no_age():
    for run in ({"finished_at": 1.0}, {"now": 2.0}, {"finished_at": None, "now": 2.0},
                {"finished_at": "1", "now": 2.0}, {"finished_at": True, "now": 2.0},
                {"finished_at": 1.0, "now": float("inf")}, {"finished_at": 1.0, "now": 10**400}):
        assert ended_ago(run) is None, run
