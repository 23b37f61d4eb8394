"""The SQLite store: jobs, coalescing, guarded state changes, and logs by byte offset."""

import dataclasses
import os
import sqlite3
import threading
import time
from contextlib import contextmanager

import pytest

from trigger_server.store import DELIVERY_DAYS, TRUNCATION_MARKER, Job, JobState, Store
from worker.runner import RUN_ID_RE


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "t.db"))


def test_a_new_job_is_queued_with_its_fields(store):
    job, coalesced = store.create_job("html", {"B": "2", "A": "1"}, None, "api", 30)
    assert not coalesced
    assert (job.state, job.target, job.vars, job.timeout) == (JobState.QUEUED, "html",
                                                              {"A": "1", "B": "2"}, 30)
    d = job.to_dict()
    assert d["created_at"].endswith("Z") and d["started_at"] is None


def test_an_identical_queued_job_is_reused(store):
    a, _ = store.create_job("html", {"A": "1"}, None, "api")
    b, coalesced = store.create_job("html", {"A": "1"}, None, "cli")
    assert coalesced and b.id == a.id
    for other in (("pdf", {"A": "1"}, None), ("html", {"A": "2"}, None),
                  ("html", {"A": "1"}, "worker2")):
        assert not store.create_job(*other, "api")[1]


def test_a_job_being_started_or_running_is_not_coalesced(store):
    a, _ = store.create_job("html", {}, None, "api")
    assert store.claim(a.id, "http://w:8000")
    b, coalesced = store.create_job("html", {}, None, "api")
    assert not coalesced and b.id != a.id


def _waiting_job(store, **kw):
    """A queued job that identical triggers have joined (so the store remembers it)."""
    job, _ = store.create_job("html", {"A": "1"}, None, "api", **kw)
    assert store.create_job("html", {"A": "1"}, None, "api")[0].id == job.id
    return job


def _retried(store, job_id):
    assert store.claim(job_id, "http://w") and store.mark_running(job_id)
    assert store.retry(job_id, "worker gone")


@pytest.mark.parametrize("move, joined_again", [
    (lambda store, job_id: store.claim(job_id, "http://w"), False),
    (lambda store, job_id: store.mark_running(job_id), False),
    (lambda store, job_id: store.finish(job_id, JobState.CANCELLED, only_waiting=True), False),
    (lambda store, job_id: store.finish(job_id, JobState.LOST), False),
    (_retried, True),  # queued again, not yet handed to a worker: it is joined again
    (lambda store, job_id: store.retry(job_id, "lost"), True),  # joined as it now is
], ids=["claimed", "marked-running", "cancelled", "ended", "retried", "retried-waiting"])
def test_a_trigger_joins_a_job_only_while_it_waits(store, move, joined_again):
    job = _waiting_job(store, retries=1)
    move(store, job.id)
    again, coalesced = store.create_job("html", {"A": "1"}, None, "api")
    assert coalesced is joined_again and (again.id == job.id) is joined_again
    assert again.to_dict() == store.get_job(again.id).to_dict()


def test_a_job_moved_on_while_a_trigger_read_it_is_not_joined_later(store, monkeypatch):
    """The dispatcher claims the job between a trigger's read and its remembering the job."""
    job, _ = store.create_job("html", {}, None, "api")
    assert store.claim(job.id, "http://w") and store.unclaim(job.id)  # waits, not remembered
    read = store._read

    def read_then_claim(sql, args=()):
        rows = read(sql, args)
        if "worker IS NULL AND target" in sql:
            assert store.claim(job.id, "http://w")
        return rows

    monkeypatch.setattr(store, "_read", read_then_claim)
    assert store.create_job("html", {}, None, "api")[0].id == job.id  # it was waiting then
    monkeypatch.setattr(store, "_read", read)
    later, coalesced = store.create_job("html", {}, None, "api")
    assert not coalesced and later.id != job.id


@pytest.mark.parametrize("move", [
    lambda store, job_id: store.claim(job_id, "http://w"),
    lambda store, job_id: store.mark_running(job_id),
    lambda store, job_id: store.finish(job_id, JobState.CANCELLED, only_waiting=True),
], ids=["claimed", "marked-running", "cancelled"])
def test_a_trigger_right_after_a_move_committed_does_not_join_the_job(store, monkeypatch, move):
    """Two triggers: one in another thread while the move's transaction is still open (it
    reads the job as waiting, and may join it), one between the move's commit and anything the
    mover does after it (it must not)."""
    job = _waiting_job(store)
    tx, seen, sent = store._tx, [], []

    def trigger():
        sent.append(1)  # each once: the second trigger's own insert runs a transaction too
        seen.append(store.create_job("html", {"A": "1"}, None, "api"))

    @contextmanager
    def tx_with_triggers():
        with tx() as db:
            yield db
            if not sent:
                other = threading.Thread(target=trigger)
                other.start()
                other.join()
        if len(sent) == 1:
            trigger()

    monkeypatch.setattr(store, "_tx", tx_with_triggers)
    move(store, job.id)
    assert seen[0] == (job, True)  # the job still waited when that trigger read it
    again, coalesced = seen[1]
    assert not coalesced and again.id != job.id


def test_a_trigger_that_read_during_a_move_does_not_remember_the_job_after_it(store,
                                                                              monkeypatch):
    """The trigger reads the job as waiting while the cancel's transaction is open, and comes
    to remember it only once the cancel has returned."""
    job = _waiting_job(store)
    tx, read, remember = store._tx, store._read, store._waiting.remember
    has_read, cancelled, joined = threading.Event(), threading.Event(), []

    def read_and_tell(sql, args=()):
        rows = read(sql, args)
        has_read.set()
        return rows

    def remember_late(*args):
        cancelled.wait(5)
        remember(*args)

    def trigger():
        monkeypatch.setattr(store, "_read", read_and_tell)  # this thread is the only reader
        joined.append(store.create_job("html", {"A": "1"}, None, "api"))

    reader = threading.Thread(target=trigger)

    @contextmanager
    def tx_with_reader():
        with tx() as db:
            yield db
            reader.start()
            assert has_read.wait(5)

    monkeypatch.setattr(store, "_tx", tx_with_reader)
    monkeypatch.setattr(store._waiting, "remember", remember_late)
    assert store.finish(job.id, JobState.CANCELLED, only_waiting=True)
    monkeypatch.setattr(store, "_tx", tx)
    cancelled.set()
    reader.join(5)
    assert joined == [(job, True)]  # it read the job before the cancel committed
    monkeypatch.setattr(store, "_read", read)
    later, coalesced = store.create_job("html", {"A": "1"}, None, "api")
    assert not coalesced and later.id != job.id


def test_a_joined_job_is_the_callers_own_copy(store):
    _waiting_job(store)
    mine, _ = store.create_job("html", {"A": "1"}, None, "api")
    mine.worker = "http://changed"
    mine.vars["A"] = "changed"
    again, _ = store.create_job("html", {"A": "1"}, None, "api")
    assert (again.worker, again.vars) == (None, {"A": "1"})


def test_state_changes_are_guarded(store):
    job, _ = store.create_job("html", {}, None, "api")
    assert store.claim(job.id, "http://w")
    assert not store.claim(job.id, "http://other")  # one worker at most
    assert store.dispatchable() == []
    assert store.mark_running(job.id)
    assert not store.mark_running(job.id)
    assert store.finish(job.id, JobState.SUCCEEDED, 0)
    assert not store.finish(job.id, JobState.FAILED, 2)  # an ended job stays ended
    assert store.get_job(job.id).state is JobState.SUCCEEDED


def test_a_cancelled_queued_job_can_no_longer_be_started(store):
    job, _ = store.create_job("html", {}, None, "api")
    assert store.finish(job.id, JobState.CANCELLED, only_waiting=True)
    assert not store.claim(job.id, "http://w")
    assert not store.mark_running(job.id)


def test_a_job_being_started_is_not_ended_as_waiting(store):
    """A claimed job's start is on its way to the worker: make may already run."""
    job, _ = store.create_job("html", {}, None, "api")
    assert store.claim(job.id, "http://w")
    assert store.finish(job.id, JobState.CANCELLED, only_waiting=True) is None
    assert store.unclaim(job.id)
    assert store.finish(job.id, JobState.CANCELLED, only_waiting=True).state is JobState.CANCELLED


def test_an_unaccepted_claim_goes_back_to_the_queue(store):
    job, _ = store.create_job("html", {}, None, "api")
    store.claim(job.id, "http://w")
    assert store.unclaim(job.id)
    assert [j.id for j in store.dispatchable()] == [job.id]


def test_logs_append_idempotently_and_read_from_any_offset(store):
    job, _ = store.create_job("html", {}, None, "api")
    assert store.append_log(job.id, 0, b"hello ") == 6
    assert store.append_log(job.id, 0, b"hello world") == 5  # a resent prefix is skipped
    assert store.append_log(job.id, 11, b"\nbye") == 4
    assert store.read_log(job.id) == b"hello world\nbye"
    assert store.read_log(job.id, 3) == b"lo world\nbye"
    assert store.read_log(job.id, 15) == b""
    assert store.get_job(job.id).log_size == 15
    with pytest.raises(ValueError, match="gap"):
        store.append_log(job.id, 20, b"x")


def test_a_log_over_the_cap_ends_with_a_marker(tmp_path):
    store = Store(str(tmp_path / "t.db"), max_log_bytes=10)
    job, _ = store.create_job("html", {}, None, "api")
    store.append_log(job.id, 0, b"0123456789abcdef")
    store.append_log(job.id, 16, b"more")
    assert store.read_log(job.id) == b"0123456789" + TRUNCATION_MARKER
    assert store.get_job(job.id).log_truncated


def test_history_pages_newest_first(store):
    ids = [store.create_job(f"t{i}", {}, None, "api")[0].id for i in range(5)]
    assert [j.id for j in store.list_jobs(limit=2)] == ids[:-3:-1]
    assert [j.id for j in store.list_jobs(limit=2, before=ids[3])] == ids[2:0:-1]
    assert [j.id for j in store.list_jobs(target="t1")] == [ids[1]]


def test_the_database_survives_reopening(tmp_path):
    path = str(tmp_path / "t.db")
    first = Store(path)
    job, _ = first.create_job("html", {}, None, "api")
    again = Store(path)
    assert again.get_job(job.id).target == "html"
    assert again.instance == first.instance  # run ids stay stable across restarts
    assert again.run_id(again.get_job(job.id)) == first.run_id(job)
    assert again.integrity_ok()


def test_run_ids_carry_a_random_key_of_the_job_except_for_jobs_of_older_versions(tmp_path):
    """A new job that gets an id again (a database restored from a backup) gets another run
    id; a job queued by a version without keys keeps the run id its worker knows it by."""
    store = Store(str(tmp_path / "t.db"))
    a, _ = store.create_job("html", {}, None, "api")
    b, _ = store.create_job("pdf", {}, None, "api")
    assert a.run_key and b.run_key and a.run_key != b.run_key
    assert store.run_id(a) == f"{store.instance}-{a.id}-{a.run_key}"
    old = dataclasses.replace(a, run_key=None, attempt=2)
    assert store.run_id(old) == f"{store.instance}-{a.id}.2"
    assert RUN_ID_RE.fullmatch(store.run_id(dataclasses.replace(a, id=2**63 - 1, attempt=99)))


def _reopened_after(tmp_path, change: str) -> tuple[Store, Job]:
    """A database with one job (`html`), changed by the SQL `change` (as another version made
    it), then opened again: (the new Store, the job as first made)."""
    path = str(tmp_path / "other-version.db")
    store = Store(path)
    job, _ = store.create_job("html", {}, None, "api")
    with store._tx() as db:
        db.execute(change)
    return Store(path), job


def test_a_jobs_table_made_before_run_keys_gets_the_column_and_keeps_its_run_ids(tmp_path):
    again, job = _reopened_after(tmp_path, "ALTER TABLE jobs DROP COLUMN run_key")
    old = again.get_job(job.id)
    assert old.run_key is None and again.run_id(old) == f"{again.instance}-{job.id}"
    new, _ = again.create_job("pdf", {}, None, "api")
    assert again.get_job(new.id).run_key == new.run_key and new.run_key


def test_a_database_a_newer_version_added_columns_to_still_serves_this_one(tmp_path):
    """Rolled back after an upgrade, the controller reads the jobs of a table with columns it
    does not know: every job read used to raise TypeError (a 500 on each request)."""
    again, job = _reopened_after(
        tmp_path, "ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 5")
    assert again.get_job(job.id).target == "html"
    new, coalesced = again.create_job("pdf", {"A": "1"}, None, "api")
    assert not coalesced and again.get_job(new.id).vars == {"A": "1"}
    assert again.claim(new.id, "http://w:8000") and again.mark_running(new.id)
    ended = again.finish(new.id, JobState.SUCCEEDED, 0)
    assert ended.state is JobState.SUCCEEDED and not hasattr(ended, "priority")


def test_a_forked_child_opens_connections_of_its_own(tmp_path):
    """gunicorn's worker, when the app was loaded in its master (--preload): SQLite's
    connections must not cross a fork, so the forking thread's are closed before it."""
    store = Store(str(tmp_path / "t.db"))
    job, _ = store.create_job("html", {}, None, "api")
    before = store._conn()
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if all went as it should
        code = 1
        try:
            ok = store._conn() is not before and store.get_job(job.id).target == "html"
            ok = ok and store.claim(job.id, "http://w:8000")  # a write, seen by the parent
            code = 0 if ok else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 10
    while (ended := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # (a child stuck for good would otherwise hang the suite)
    if ended[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child did not end")
    assert os.waitstatus_to_exitcode(ended[1]) == 0
    with pytest.raises(sqlite3.ProgrammingError):  # closed before the fork
        before.execute("SELECT 1")
    assert store.get_job(job.id).worker == "http://w:8000"  # (on a new connection)


def test_a_fork_in_the_middle_of_a_transaction_leaves_it_alone(tmp_path, caplog):
    """Closing that connection before the fork would lose the transaction."""
    store = Store(str(tmp_path / "t.db"))
    with store._tx() as db:
        db.execute("INSERT INTO meta (key, value) VALUES ('forked', 'in a transaction')")
        pid = os.fork()
        if pid == 0:
            os._exit(0)  # (the child touches nothing)
        os.waitpid(pid, 0)
    assert store._read("SELECT value FROM meta WHERE key = 'forked'")[0][0] == (
        "in a transaction")
    assert "a fork in the middle of a transaction" in caplog.text


def test_a_log_table_made_by_an_older_version_is_moved_to_the_faster_layout(tmp_path):
    path = str(tmp_path / "old.db")
    store = Store(path)
    job, _ = store.create_job("html", {}, None, "api")
    store.append_log(job.id, 0, b"kept across the change\n")
    db = store._conn()
    db.executescript("""
        ALTER TABLE log_chunks RENAME TO fresh;
        CREATE TABLE log_chunks (job_id INTEGER NOT NULL, offset INTEGER NOT NULL,
                                 data BLOB NOT NULL, PRIMARY KEY (job_id, offset)) WITHOUT ROWID;
        INSERT INTO log_chunks SELECT * FROM fresh;
        DROP TABLE fresh;
    """)
    again = Store(path)
    made = again._read("SELECT sql FROM sqlite_master WHERE name = 'log_chunks'")[0][0]
    assert "WITHOUT ROWID" not in made.upper()
    assert again.read_log(job.id) == b"kept across the change\n"
    again.append_log(job.id, 23, b"and appended after\n")
    assert again.read_log(job.id, 23) == b"and appended after\n"
    assert again.integrity_ok()


def test_webhook_delivery_ids_are_forgotten_after_delivery_days(tmp_path):
    store = Store(str(tmp_path / "t.db"))
    assert store.record_delivery("github", "old")
    with store._tx() as db:  # received long ago
        db.execute("UPDATE deliveries SET received_at = received_at - ? WHERE delivery = 'old'",
                   (DELIVERY_DAYS * 86400 + 60,))
    assert not store.record_delivery("github", "old")  # pruned at most once an hour
    store._deliveries_pruned = 0.0  # an hour later
    assert store.record_delivery("github", "new")
    assert store.record_delivery("github", "old")  # forgotten: a delivery that old is new again
    assert not store.record_delivery("github", "new")


def test_a_webhook_delivery_is_recorded_with_its_job_or_not_at_all(tmp_path, monkeypatch):
    """One transaction: a crash (here, a failing insert of the job) between recording the
    delivery and queueing its job must not leave the delivery recorded without a job, or the
    host's redelivery would be ignored as a duplicate and the push never built."""
    store = Store(str(tmp_path / "t.db"))

    def no_job(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Store, "_queue", staticmethod(no_job))
    with pytest.raises(Exception, match="disk I/O error"):
        store.queue_delivery("github", ["d1", "sha256:x"], "site", "github")
    monkeypatch.undo()
    job, coalesced = store.queue_delivery("github", ["d1", "sha256:x"], "site", "github")
    assert job.target == "site" and job.source == "github" and not coalesced
    rows = store._read("SELECT delivery, job_id FROM deliveries ORDER BY delivery")
    assert [tuple(r) for r in rows] == [("d1", job.id), ("sha256:x", job.id)]
    assert store.queue_delivery("github", ["d2", "sha256:x"], "site", "github") is None
    assert not store.delivery_seen("github", "d2")  # all of its keys, or none


def test_an_end_can_add_a_last_line_to_the_log_in_its_transaction(store):
    """The controller's word on an end no worker wrote into the log (lost, refused)."""
    job, _ = store.create_job("html", {}, None, "api")
    store.append_log(job.id, 0, b"building\n")
    ended = store.finish(job.id, JobState.LOST, error="worker gone", note="\n*** lost\n")
    assert store.read_log(job.id) == b"building\n\n*** lost\n"
    assert ended.log_size == len(b"building\n\n*** lost\n")
    empty, _ = store.create_job("pdf", {}, None, "api")
    store.finish(empty.id, JobState.FAILED, error="rejected", note="\n*** rejected\n")
    assert store.read_log(empty.id) == b"*** rejected\n"  # no blank first line


def test_a_log_read_is_bounded_and_spans_pieces(store):
    job, _ = store.create_job("big", {}, None, "api")
    assert store.append_logs(job.id, 0, [b"a" * 100, b"b" * 100]) == 200
    assert store.read_log(job.id, 0, limit=50) == b"a" * 50
    assert store.read_log(job.id, 60, limit=40) == b"a" * 40
    assert store.read_log(job.id, 60, limit=70) == b"a" * 40 + b"b" * 30
    assert store.read_log(job.id, 150, limit=10) == b"b" * 10
    assert store.read_log(job.id, 0, limit=1000) == b"a" * 100 + b"b" * 100


def test_pieces_stored_together_skip_what_was_stored_and_stop_at_the_cap(tmp_path):
    store = Store(str(tmp_path / "t.db"), max_log_bytes=10)
    job, _ = store.create_job("big", {}, None, "api")
    told = []
    store.log_written = lambda job_id, offset, data: told.append((offset, data))
    assert store.append_log(job.id, 0, b"0123") == 4
    assert store.append_logs(job.id, 2, [b"23", b"45", b"6789ab", b"never"]) == 6 + len(
        TRUNCATION_MARKER)
    assert store.read_log(job.id) == b"0123456789" + TRUNCATION_MARKER
    assert told == [(0, b"0123"), (4, b"45"), (6, b"6789" + TRUNCATION_MARKER)]
    assert store.append_logs(job.id, 12, [b"more"]) == 0  # truncated: nothing more


def test_dispatchable_passes_over_the_targets_being_built(store):
    ids = {}
    for target in ("html", "pdf", "html", "site", "pdf"):
        job, _ = store.create_job(target, {"N": str(len(ids))}, None, "api")
        ids[job.id] = target
    assert [j.target for j in store.dispatchable()] == list(ids.values())
    assert [j.target for j in store.dispatchable(skip_targets={"html", "pdf"})] == ["site"]
    assert [j.target for j in store.dispatchable(skip_targets=["html"], limit=2)] == ["pdf",
                                                                                      "site"]
    assert store.dispatchable(after=max(ids), skip_targets={"html"}) == []


def test_build_since_finds_a_build_that_sees_the_change(store):
    """What a file-watch request from a second replica joins (dispatch.Dispatcher._watched)."""
    job, _ = store.create_job("html", {}, "worker", "watch")
    assert store.build_since("html", "worker", time.time()).id == job.id  # queued
    assert store.claim(job.id, "http://w:8000")
    assert store.build_since("html", "worker", time.time()).id == job.id  # handed over
    store.mark_running(job.id)
    started = store.get_job(job.id).started_at
    assert store.build_since("html", "worker", started).id == job.id
    assert store.build_since("html", "worker", started + 0.001) is None  # changed after
    assert store.build_since("html", "other", started) is None
    assert store.build_since("pdf", "worker", started) is None
    store.finish(job.id, JobState.FAILED, 2)
    assert store.build_since("html", "worker", started).id == job.id
    cancelled, _ = store.create_job("html", {}, "worker", "watch")
    store.claim(cancelled.id, "http://w:8000")
    store.mark_running(cancelled.id)
    store.finish(cancelled.id, JobState.CANCELLED)
    assert store.build_since("html", "worker", started).id == job.id  # not the cancelled one
    store.create_job("pdf", {"A": "1"}, "worker", "api")
    assert store.build_since("pdf", "worker", 0) is None


def test_build_since_looks_at_the_targets_recent_jobs_only(store):
    old, _ = store.create_job("html", {}, "worker", "watch")
    store.claim(old.id, "http://w:8000")
    store.mark_running(old.id)
    for i in range(3):
        store.create_job("html", {"N": str(i)}, "worker", "api")
    assert store.build_since("html", "worker", 0, recent=4).id == old.id
    assert store.build_since("html", "worker", 0, recent=3) is None


def _job(store, n, state=None, log=b"", notify=None):
    job, _ = store.create_job("site", {"N": str(n)}, None, "api", notify=notify)
    if log:
        store.append_log(job.id, 0, log)
    if state is JobState.RUNNING:
        store.claim(job.id, "http://w")
        store.mark_running(job.id)
    elif state is not None:
        store.finish(job.id, state, 0, None)
    return job.id


def prune(store, keep, **kw) -> int:
    """Every batch prune_jobs has, as the history's pruner takes them."""
    total, after = 0, 0
    while True:
        done, after = store.prune_jobs(keep, after=after, **kw)
        total += done
        if not after:
            return total


def test_pruning_forgets_old_ended_jobs_and_their_logs_only(store):
    store.notify_targets = lambda job: [job.notify] if job.notify else []
    running = _job(store, 0, JobState.RUNNING)
    notified = _job(store, 1, JobState.FAILED, b"x", notify="http://receiver/")
    old = [_job(store, n, JobState.SUCCEEDED, b"log %d\n" % n) for n in range(2, 8)]
    queued = _job(store, 8)
    newest = [_job(store, n, JobState.SUCCEEDED, b"new\n") for n in range(9, 11)]
    assert prune(store, keep=3) == 5  # old[-1] stays: the queued job's end compares with it
    assert prune(store, keep=3) == 0
    left = sorted(j.id for j in store.list_jobs(limit=100))
    assert left == sorted([running, notified, old[-1], queued, *newest])
    assert all(store.get_job(i) is None and store.read_log(i) == b"" for i in old[:-1])
    assert store.read_log(newest[0]) == b"new\n" and store.read_log(notified) == b"x"


def test_pruning_keeps_the_job_a_targets_next_end_compares_with(store):
    """TRIGGER_NOTIFY_ON=change compares a job's end with the target's last end before it: a
    rarely built target whose jobs were all pruned, or a job that ended before an older one
    still running, would never be notified of a change."""
    rare, _ = store.create_job("rare", {}, None, "api")
    store.finish(rare.id, JobState.FAILED, 2, None)
    first = _job(store, 0, JobState.FAILED)
    running = _job(store, 1, JobState.RUNNING)
    later = _job(store, 2, JobState.SUCCEEDED)  # started later, ended first
    ids = [_job(store, n, JobState.SUCCEEDED) for n in range(3, 8)]
    assert prune(store, keep=1) == 5  # later and ids[:-1]
    assert sorted(j.id for j in store.list_jobs()) == [rare.id, first, running, ids[-1]]
    assert store.previous_state("rare", 10**6) is JobState.FAILED
    assert store.previous_state("site", running) is JobState.FAILED
    assert later not in [j.id for j in store.list_jobs()]


def test_pruning_goes_a_batch_of_log_bytes_at_a_time(store):
    ids = [_job(store, n, JobState.SUCCEEDED, b"x" * 1000) for n in range(5)]
    assert store.prune_jobs(keep=0, batch_bytes=2500)[0] == 2  # 2,000 bytes; a third: over
    assert store.prune_jobs(keep=0, batch_bytes=10)[0] == 1  # at least one, however big
    assert [j.id for j in store.list_jobs()] == [ids[4], ids[3]]


def test_an_end_the_worker_reports_late_is_dated_back_by_that_much(store):
    """A run that ended while no controller followed it (recorded after a restart) is dated
    by how long ago the worker says it ended; an end reported as it happens keeps the time of
    its recording, as its start does."""
    job, _ = store.create_job("html", {}, None, "api")
    assert store.claim(job.id, "http://w") and store.mark_running(job.id)
    started = store.get_job(job.id).started_at
    ended = store.finish(job.id, JobState.SUCCEEDED, 0, ended_ago=0.01)
    assert started <= ended.finished_at <= time.time()
    late, _ = store.create_job("pdf", {}, None, "api")
    assert store.claim(late.id, "http://w") and store.mark_running(late.id)
    with store._tx() as db:  # it started an hour ago, and the worker says it ended 59 min ago
        db.execute("UPDATE jobs SET started_at = started_at - 3600 WHERE id = ?", (late.id,))
    before = time.time()
    ended = store.finish(late.id, JobState.FAILED, 2, "make ended with exit status 2",
                         ended_ago=3540)
    assert before - 3540 <= ended.finished_at <= time.time() - 3540


def test_how_long_ago_a_start_or_end_was_is_taken_only_beyond_late_report():
    from trigger_server.store import LATE_REPORT, reported_time
    now = 1_000_000.0
    assert reported_time(None, now) == now
    assert reported_time(LATE_REPORT / 2, now) == now  # reported as it happened
    assert reported_time(-30, now) == now  # a worker's answer from the future: no
    assert reported_time(60, now) == now - 60


def test_a_start_reported_late_keeps_the_time_it_happened(store):
    early, _ = store.create_job("html", {}, None, "api")
    late, _ = store.create_job("pdf", {}, None, "api")
    for job in (early, late):
        assert store.claim(job.id, "http://w")
    with store._tx() as db:  # made an hour ago (a start is never dated before that)
        db.execute("UPDATE jobs SET created_at = created_at - 3600")
    before = time.time()
    assert store.mark_running(early.id, started_ago=1.0)  # as it happened: now
    assert store.mark_running(late.id, started_ago=600)
    assert before <= store.get_job(early.id).started_at <= time.time()
    assert before - 600 <= store.get_job(late.id).started_at <= time.time() - 600
    stepped, _ = store.create_job("doc", {}, None, "api")  # a worker clock stepped forward
    assert store.claim(stepped.id, "http://w") and store.mark_running(stepped.id, 10**6)
    assert store.get_job(stepped.id).started_at == stepped.created_at


def test_a_late_end_dated_before_the_start_is_the_start(store):
    job, _ = store.create_job("html", {}, None, "api")
    assert store.claim(job.id, "http://w") and store.mark_running(job.id)
    started = store.get_job(job.id).started_at
    ended = store.finish(job.id, JobState.SUCCEEDED, 0, ended_ago=100)
    assert ended.finished_at == started
