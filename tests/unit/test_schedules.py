"""Schedules: parsing, exactly-once fire times, catch-up and no pile-up, on a real store."""

import logging
import sqlite3
import time
from datetime import datetime

import pytest

from trigger_server import workers as workers_module
from trigger_server.dispatch import Dispatcher
from trigger_server.schedules import Schedule, ScheduleError, Scheduler, parse, timezone
from trigger_server.store import JobState, Store, StoreError
from trigger_server.workers import Worker, WorkerClient, WorkerPool

UTC = timezone("UTC")


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "t.db"))


def scheduler(store, lines: str, catchup: str = "once", tz=UTC) -> Scheduler:
    client = WorkerClient("token")
    dispatcher = Dispatcher(store, WorkerPool([], client), client)  # never started: no threads
    return Scheduler(parse(lines, "test"), store, dispatcher, tz, catchup)


def test_lines_are_parsed_with_targets_and_variables():
    found = parse("# nightly\n0 3 * * * site LANG=en\n\n@hourly stats\n@reboot site\n", "S")
    assert [(s.expr, s.target, s.vars) for s in found] == [
        ("0 3 * * *", "site", {"LANG": "en"}), ("@hourly", "stats", {}), ("@reboot", "site", {})]


@pytest.mark.parametrize("line,message", [
    ("61 * * * * site", "line 2: '61 * * * *' is not a valid cron expression (a value is out "
                        "of its field's range: minute 0-59"),
    ("1-70 * * * * site", "out of its field's range"),
    ("*/0 * * * * site", "line 2: '*/0 * * * *' is not a valid cron expression (step '0'"),
    ("a b c d e site", "line 2: 'a b c d e' is not a 5-field cron expression"),
    ("* * * * site", "line 2: '* * * * site' is not a 5-field cron expression"),
    ("0 0 * * * * site", "line 2: -"),  # six fields: the sixth is read as the target
    ("@often site", "line 2: unknown macro '@often'"),
    ("0 3 * * *", "line 2: no target"),
    ("0 3 * * * -x", "line 2: target must not start with '-'"),
    ("0 3 * * * site SHELL=/bin/sh", "line 2: variable SHELL is always refused"),
    ("0 0 31 2 * site", "line 2: '0 0 31 2 *' never fires"),  # valid fields, no such date
    ("0 0 31 4,6,9,11 * site", "line 2: '0 0 31 4,6,9,11 *' never fires"),
    ("@hourly site # the site", "line 2: a '#' comment must have a line of its own"),
    ("@hourly site MSG=x #1", "line 2: a '#' comment must have a line of its own"),
])
def test_a_bad_line_is_an_error_naming_the_line(line, message):
    with pytest.raises(ScheduleError) as err:
        parse(f"@daily ok\n{line}\n", "TRIGGER_SCHEDULE")
    assert str(err.value).startswith("TRIGGER_SCHEDULE line 2:")
    if not message.endswith("-"):
        assert message in str(err.value)


def test_a_rare_but_real_date_is_accepted():
    # Feb 29th fires every four years; a weekday ORs with the day (cron's rule), so it fires
    found = parse("0 0 29 2 * leap\n0 0 31 2 mon mondays\n", "S")
    assert [s.target for s in found] == ["leap", "mondays"]
    assert found[0].next_after(ts("2026-03-01T00:00:00+00:00"), UTC) == \
        ts("2028-02-29T00:00:00+00:00")


def test_next_fire_times_follow_the_timezone():
    berlin = timezone("Europe/Berlin")
    s = Schedule("30 2 * * *", "site", {}, "30 2 * * * site")
    # 02:30 does not exist on the day clocks go forward; croniter moves to the next valid time
    assert s.next_after(ts("2026-03-28T23:00:00+00:00"), berlin) == ts("2026-03-29T03:00:00+02:00")
    assert s.next_after(ts("2026-06-01T00:00:00+00:00"), berlin) == ts("2026-06-01T02:30:00+02:00")
    with pytest.raises(ScheduleError):
        timezone("Mars/Olympus")


@pytest.mark.parametrize("tz", [":/usr/share/zoneinfo/Europe/Berlin",
                                "/usr/share/zoneinfo/Europe/Berlin", ":Europe/Berlin"])
def test_tz_may_name_a_zone_file_by_its_path_as_posix_allows(tz):
    """Many hosts set TZ=:/etc/localtime; the controller must start there, not refuse it."""
    s = Schedule("0 6 * * *", "site", {}, "0 6 * * * site")
    assert s.next_after(ts("2026-01-10T00:00:00+00:00"), timezone(tz)) == \
        ts("2026-01-10T06:00:00+01:00")
    with pytest.raises(ScheduleError, match="not a known timezone"):
        timezone(":/nonexistent/zone")


def test_a_fire_time_is_claimed_once_even_by_two_schedulers(store):
    a, b = scheduler(store, "*/5 * * * * ok"), scheduler(store, "*/5 * * * * ok")
    now = ts("2026-11-27T10:02:00+00:00")
    a.catch_up(now)
    b.catch_up(now)
    due = ts("2026-11-27T10:05:00+00:00")
    a.run_due(due + 0.2)
    b.run_due(due + 0.3)
    jobs = store.list_jobs()
    assert [(j.target, j.source) for j in jobs] == [("ok", "schedule")]
    a.run_due(due + 1)  # the same fire time again: nothing
    assert len(store.list_jobs()) == 1


def test_a_firing_while_the_last_job_is_queued_joins_it(store):
    s = scheduler(store, "* * * * * ok")
    s.catch_up(ts("2026-11-27T10:00:30+00:00"))
    s.run_due(ts("2026-11-27T10:01:00+00:00"))
    s.run_due(ts("2026-11-27T10:02:00+00:00"))
    s.run_due(ts("2026-11-27T10:03:00+00:00"))
    assert len(store.list_jobs()) == 1  # still queued: one more build, not three


def test_missed_fire_times_run_once_after_downtime(store):
    scheduler(store, "0 * * * * ok").catch_up(ts("2026-11-27T08:30:00+00:00"))
    assert store.list_jobs() == []  # a new schedule does not fire for the past
    scheduler(store, "0 * * * * ok").catch_up(ts("2026-11-27T12:30:00+00:00"))
    assert len(store.list_jobs()) == 1  # 09:00 .. 12:00 missed: one job


def test_missed_fire_times_can_be_skipped(store):
    scheduler(store, "0 * * * * ok", "none").catch_up(ts("2026-11-27T08:30:00+00:00"))
    scheduler(store, "0 * * * * ok", "none").catch_up(ts("2026-11-27T12:30:00+00:00"))
    assert store.list_jobs() == []


def test_reboot_fires_at_every_start(store):
    scheduler(store, "@reboot ok").catch_up(ts("2026-11-27T08:30:00+00:00"))
    scheduler(store, "@reboot ok").catch_up(ts("2026-11-27T08:31:00+00:00"))
    assert len(store.list_jobs()) == 1  # the second joined the first, still queued


@pytest.mark.parametrize("line,expected", [
    ("30 2 * * * site", ["10-25 02:30+0200", "10-26 02:30+0100"]),  # once, as cron does
    ("0 * * * * site", ["10-25 02:00+0200", "10-25 02:00+0100", "10-25 03:00+0100"]),
    ("30 2 * * * site", ["03-29 03:00+0200", "03-30 02:30+0200"]),  # spring: right after
])
def test_a_line_at_set_hours_fires_once_as_the_clocks_go_back(store, line, expected):
    """02:30 comes twice in Berlin's autumn night: a daily 02:30 fired at both."""
    berlin = timezone("Europe/Berlin")
    s = scheduler(store, line, tz=berlin)
    start = "2026-10-24T23:30:00+00:00" if expected[0] > "10" else "2026-03-28T22:00:00+00:00"
    s.catch_up(ts(start))
    fired, now = [], ts(start)
    for _ in range(len(expected)):
        now = s._next[s.schedules[0].key]
        s.run_due(now)
        fired.append(datetime.fromtimestamp(now, berlin).strftime("%m-%d %H:%M%z"))
        store.finish(store.list_jobs()[0].id, JobState.SUCCEEDED, 0, None)  # one job each
    assert fired == expected
    assert len(store.list_jobs()) == len(expected)


def test_the_listing_shows_next_fire_and_last_job(store):
    s = scheduler(store, "0 3 * * * ok LANG=en")
    s.catch_up(ts("2026-11-27T02:00:00+00:00"))
    s.run_due(ts("2026-11-27T03:00:01+00:00"))
    (row,) = s.describe()
    assert row["cron"] == "0 3 * * *" and row["vars"] == {"LANG": "en"}
    assert row["last_fire"] == "2026-11-27T03:00:00.000Z"
    assert row["next_fire"] == "2026-11-28T03:00:00.000Z"
    assert row["last_job"]["source"] == "schedule"


def test_the_listing_shows_only_fire_times_that_fired(store):
    """A new schedule, and a restart with catch-up `none`, record the fire times they skip: the
    listing showed those as `last_fire`, beside a `last_job` that had not fired then."""
    s = scheduler(store, "0 3 * * * ok")
    s.catch_up(ts("2026-11-27T10:00:00+00:00"))  # new: 2026-11-27 03:00 is skipped
    (row,) = s.describe()
    assert row["last_fire"] is None and row["last_job"] is None
    s.run_due(ts("2026-11-28T03:00:01+00:00"))
    later = scheduler(store, "0 3 * * * ok", "none")
    later.catch_up(ts("2026-11-30T10:00:00+00:00"))  # down: 29th and 30th skipped
    (row,) = later.describe()
    assert row["last_fire"] == "2026-11-28T03:00:00.000Z" and row["last_job"] is not None


def test_a_database_from_before_fired_at_shows_its_last_fire(tmp_path):
    db = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    db.execute("CREATE TABLE schedule_state (key TEXT PRIMARY KEY, last_fire REAL, "
               "last_job INTEGER)")
    db.execute("INSERT INTO schedule_state VALUES ('a', 100.0, 7), ('b', 200.0, NULL)")
    db.close()
    store = Store(str(tmp_path / "old.db"))
    assert store.schedule_fired("a") == (100.0, 7) and store.schedule_fired("b") == (None, None)


def test_a_fire_whose_job_could_not_be_queued_is_fired_again(store, tmp_path):
    """The fire time was recorded in one transaction and its job queued in the next: a database
    error (or a crash) between the two lost the fire, as the retry found it claimed."""
    s = scheduler(store, "* * * * * site")
    s.catch_up(ts("2026-11-27T10:00:30+00:00"))
    refuse = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    refuse.execute("CREATE TRIGGER full BEFORE INSERT ON jobs BEGIN "
                   "SELECT RAISE(ABORT, 'database or disk is full'); END")
    with pytest.raises(StoreError):
        s.run_due(ts("2026-11-27T10:01:00+00:00"))
    assert store.list_jobs() == []
    refuse.execute("DROP TRIGGER full")
    refuse.close()
    s.run_due(ts("2026-11-27T10:01:01+00:00"))  # the scheduler's loop tries again
    assert [(j.target, j.source) for j in store.list_jobs()] == [("site", "schedule")]
    assert store.schedule_state(s.schedules[0].key)[1] == store.list_jobs()[0].id


# --- asking the workers about the lines ------------------------------------------------------
class Lister:
    """Stands in for the worker client's `targets` (the integration test asks a real worker):
    `names` after `delay` seconds, counting the listings."""

    def __init__(self, *names, delay=0.0):
        self.names, self.delay, self.calls = list(names), delay, 0

    def targets(self, worker):
        self.calls += 1
        time.sleep(self.delay)
        return [{"name": n, "description": ""} for n in self.names], False


@pytest.fixture
def asking(store):
    """A scheduler whose pool has one healthy worker that lists its targets with a Lister."""
    made = []

    def make(lines, lister):
        pool = WorkerPool(["http://w:8000"], lister)  # not started: the worker is put in by hand
        pool._workers["http://w:8000"] = Worker(url="http://w:8000", name="w",
                                                configured="http://w:8000", healthy=True,
                                                vars=frozenset())
        client = WorkerClient("token")
        s = Scheduler(parse(lines, "test"), store, Dispatcher(store, WorkerPool([], client),
                                                              client), UTC, "once", pool)
        s.catch_up(ts("2026-11-27T02:00:00+00:00"))
        made.append(pool)
        return s
    yield make
    for pool in made:
        pool.stop()


def test_one_listing_answers_for_every_line_and_get_schedules_does_not_ask(asking, caplog):
    lister = Lister("site")
    s = asking("@daily site\n@daily nosuch1\n@daily nosuch2\n@daily site N=1", lister)
    with caplog.at_level(logging.INFO, logger="trigger_server"):
        s.check_lines()
    assert lister.calls == 1
    problems = [row["problem"] for row in s.describe()]
    assert problems[0] is None and "nosuch1 is not a target" in problems[1]
    assert "nosuch2 is not a target" in problems[2] and "WORKER_VARS" in problems[3]
    assert "schedule '@daily nosuch1': target nosuch1 is not a target" in caplog.text
    lister.delay = 5  # a worker slow to list: GET /schedules shows the last check's word
    started = time.monotonic()
    assert [row["problem"] for row in s.describe()] == problems
    assert time.monotonic() - started < 1 and lister.calls == 1


def test_a_slow_listing_still_gets_its_warning(asking, caplog, monkeypatch):
    """The check waits for the list as long as GET /targets does, not a trigger's 3 s."""
    monkeypatch.setattr(workers_module, "TARGETS_WAIT", 0.2)
    s = asking("@daily nosuch", Lister("site", delay=1.0))
    with caplog.at_level(logging.WARNING, logger="trigger_server"):
        s.check_lines()
    assert "schedule '@daily nosuch': target nosuch is not a target" in caplog.text


def test_a_line_fixed_since_is_said_so_once_and_a_lost_list_changes_nothing(asking, caplog):
    lister = Lister("site")
    s = asking("@daily other", lister)
    s.check_lines()
    lister.names.append("other")  # the makefile gained the target
    with caplog.at_level(logging.INFO, logger="trigger_server"):
        s.check_lines()
        s.check_lines()
    assert caplog.text.count("schedule '@daily other': the workers take it now") == 1
    assert s.describe()[0]["problem"] is None
    lister.names.remove("other")
    s.check_lines()
    lister.targets = lambda worker: (_ for _ in ()).throw(OSError("gone"))  # no list at all
    s.check_lines()
    assert "other is not a target" in s.describe()[0]["problem"]
