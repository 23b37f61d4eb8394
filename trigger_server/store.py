"""SQLite: jobs, their logs and the notifications of their ends. The only module that writes SQL.

One connection per thread, WAL mode, so API threads read while the dispatcher writes. Every
state change is a single UPDATE guarded by the state it expects, so two threads can never both
move a job (a cancelled job is never dispatched; a job is claimed by one worker at most).

One Store (one controller process) per database: it remembers in memory which job is waiting
for each identical trigger (see `Waiting`), which only this Store's own writes keep true.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from enum import Enum

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    vars TEXT NOT NULL DEFAULT '{}',
    selector TEXT,
    worker TEXT,
    state TEXT NOT NULL,
    exit_code INTEGER,
    error TEXT,
    source TEXT NOT NULL,
    timeout REAL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    log_size INTEGER NOT NULL DEFAULT 0,
    log_truncated INTEGER NOT NULL DEFAULT 0,
    notify TEXT,
    retries INTEGER NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 0,
    log_base INTEGER NOT NULL DEFAULT 0,
    run_key TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, id);
CREATE INDEX IF NOT EXISTS jobs_queued ON jobs (state, target, vars, selector)
    WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS jobs_by_target ON jobs (target, id);
CREATE TABLE IF NOT EXISTS deliveries (
    provider TEXT NOT NULL,
    delivery TEXT NOT NULL,
    job_id INTEGER,
    received_at REAL NOT NULL,
    PRIMARY KEY (provider, delivery)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS schedule_state (
    key TEXT PRIMARY KEY,
    last_fire REAL,  -- the latest fire time dealt with: fired, or skipped
    last_job INTEGER,
    fired_at REAL  -- the fire time last_job was queued for
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL,
    url TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due REAL NOT NULL,
    receiver TEXT  -- whom the URL reaches (notify.Notifier.receiver_of); NULL: not yet known
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications (due);
CREATE TABLE IF NOT EXISTS log_chunks (
    job_id INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (job_id, offset)
);
"""
# Log pieces of up to 1 MiB are rows much larger than a page: in a rowid table they are stored
# once, in overflow pages, and a WITHOUT ROWID table (as in older versions) wrote them 25% slower.
# The job a trigger joins: queued and not yet handed to a worker, same target, vars, selector.
SAME_WAITING = ("SELECT * FROM jobs WHERE state = 'queued' AND worker IS NULL AND target = ? "
                "AND vars = ? AND selector IS ? ORDER BY id LIMIT 1")
LOG_TABLE = SCHEMA[SCHEMA.index("CREATE TABLE IF NOT EXISTS log_chunks"):]
# Pages written to the WAL before a checkpoint copies them into the database (and syncs):
# 40 MB rather than SQLite's 4 MB, so a big log is not held up by a checkpoint every 4 MB.
WAL_AUTOCHECKPOINT = 10000
WAL_SIZE_LIMIT = 64 * 1024 * 1024  # what the WAL file is cut back to after a checkpoint

MAX_SKIPPED_TARGETS = 500  # more busy targets than this are skipped by the caller, not in SQL
# A start or an end the worker reports this long after it happened (a run that ended while no
# controller followed it) is dated back by that much; see reported_time.
LATE_REPORT = 2.0
DELIVERY_DAYS = 30  # webhook delivery ids are remembered this long, to refuse redeliveries
TRUNCATION_MARKER = b"\n*** maketrigger: log truncated here: it reached TRIGGER_MAX_LOG_BYTES ***\n"


# A job (as `j`) the history may forget: ended, with nothing left to send, and not the job its
# target's next end is compared with (the target's next job has ended too).
_PRUNABLE = (
    "state IN ('succeeded', 'failed', 'cancelled', 'lost') "
    "AND id NOT IN (SELECT job_id FROM notifications) "
    "AND (SELECT n.state FROM jobs AS n WHERE n.target = j.target AND n.id > j.id "
    "ORDER BY n.id LIMIT 1) IN ('succeeded', 'failed', 'cancelled', 'lost')")


def reported_time(ago: float | None, now: float | None = None) -> float:
    """A job's started_at or finished_at, by the controller's clock: the time the start or end
    is recorded, or, if the worker reported it more than LATE_REPORT seconds after it happened
    (`ago`, the worker's own clock's difference: clocks may differ between hosts), that much
    earlier. A run that ended while no controller followed it, recorded after a restart, would
    otherwise seem to have run until then; one whose start a controller killed meanwhile never
    saw confirmed would seem to have started then. The caller keeps an end from coming before
    the start; `ago` is a finite number or None (dispatch.ended_ago, dispatch.started_ago)."""
    now = time.time() if now is None else now
    return now - ago if ago is not None and ago > LATE_REPORT else now


class _SeenBefore(Exception):
    """A webhook delivery's key was recorded before (Store.record_delivery)."""


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"

    @property
    def ended(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


class StoreError(RuntimeError):
    """The database cannot be used right now (locked, disk full, unreadable)."""


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


@dataclass
class Job:
    id: int
    target: str
    vars: dict
    selector: str | None
    worker: str | None
    state: JobState
    exit_code: int | None
    error: str | None
    source: str
    timeout: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    log_size: int
    log_truncated: bool
    notify: str | None = None
    retries: int = 0
    attempt: int = 0
    log_base: int = 0  # where the current attempt's log starts in the stored log
    run_key: str | None = None  # random, in its run ids (None: a job of an older version)
    cancel_requested: bool = False  # a cancel was asked for while a worker had it

    @property
    def run_log_offset(self) -> int:
        """How much of the current attempt's log (the worker's offset) is stored."""
        return self.log_size - self.log_base

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        d = dict(row)
        d["vars"] = json.loads(d["vars"])
        d["state"] = JobState(d["state"])
        d["log_truncated"] = bool(d["log_truncated"])
        d["cancel_requested"] = bool(d.get("cancel_requested"))
        try:
            return cls(**d)
        except TypeError:  # a column that a newer version added (a database rolled back to
            # this one): not ours to read. (Only then: this is every job's way out of SQL.)
            return cls(**{k: v for k, v in d.items() if k in _JOB_FIELDS})

    def to_dict(self) -> dict:
        return {
            "id": self.id, "target": self.target, "vars": self.vars, "state": self.state.value,
            "exit_code": self.exit_code, "worker": self.worker,
            "requested_worker": self.selector, "source": self.source, "error": self.error,
            "timeout": self.timeout, "created_at": iso(self.created_at),
            "started_at": iso(self.started_at), "finished_at": iso(self.finished_at),
            "log_size": self.log_size, "log_truncated": self.log_truncated,
            "notify": self.notify, "retries": self.retries, "attempt": self.attempt,
        }


_JOB_FIELDS = frozenset(f.name for f in fields(Job))


class Waiting:
    """Which job each identical trigger joins: for a (target, vars, selector), a job that is
    queued and not yet handed to a worker, as this process's own writes left it. A burst of
    identical triggers is answered from here instead of an SQLite read each (a read costs 0.03
    ms alone, but ~0.3 ms of CPU per trigger amid a burst's threads, measured 2026-11-28).

    Only a hint that is never wrong. A job is remembered after a read or an insert saw it
    waiting. A write that may move a job on (claim, start, end, retry) runs inside `moving`:
    the job is forgotten before the write and cannot be remembered again until the write has
    committed or rolled back, and a read that began before the write is not remembered after it
    (`epoch`). A job that waits again (its start refused, or retried) is found by the SQLite
    read, as any job not remembered is."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[tuple, Job] = {}
        self._keys: dict[int, tuple] = {}
        self._moving: dict[int, int] = {}  # job id: how many writes of it are under way
        self.epoch = 0  # how many times a write began or ended that may move a job on

    def get(self, key: tuple) -> tuple[Job | None, int]:
        """A copy of the job remembered for `key` (or None), and the epoch to `remember` with."""
        with self._lock:
            job = self._jobs.get(key)
            return self._copy(job), self.epoch

    def remember(self, key: tuple, job: Job, epoch: int) -> None:
        """`job` was seen waiting by a read that began at `epoch`."""
        with self._lock:
            if epoch == self.epoch and key not in self._jobs and job.id not in self._moving:
                self._jobs[key] = self._copy(job)
                self._keys[job.id] = key

    @contextmanager
    def moving(self, job_id: int) -> Iterator[None]:
        """Around a write (its transaction included) that may move the job on."""
        with self._lock:
            self._moving[job_id] = self._moving.get(job_id, 0) + 1
            self._drop(job_id)
        try:
            yield
        finally:
            with self._lock:  # (the epoch again: a read meanwhile may predate the commit)
                left = self._moving.pop(job_id) - 1
                if left:
                    self._moving[job_id] = left
                self._drop(job_id)

    def _drop(self, job_id: int) -> None:
        self.epoch += 1
        key = self._keys.pop(job_id, None)
        if key is not None:
            del self._jobs[key]

    @staticmethod
    def _copy(job: Job | None) -> Job | None:
        if job is None:
            return None
        mine = copy.copy(job)
        mine.vars = dict(job.vars)
        return mine


_STORES: weakref.WeakSet[Store] = weakref.WeakSet()


def _close_connections_before_fork() -> None:
    """Before a fork (gunicorn's master forking its worker, when it loaded the app itself with
    --preload) the forking thread's connections are closed; it opens new ones when it needs
    them. SQLite's connections must not be used across a fork, nor even closed in the child;
    and a child that opened its own beside an inherited one took no file locks of its own
    (SQLite keeps them per process), so a checkpoint by another process could delete a WAL
    the child still wrote to. One in a transaction is left open (closing it would lose the
    transaction), with a warning. Only the forking thread's: a process whose Stores other
    threads use must not fork (CPython closes those threads' connections in the child). The
    one fork here is gunicorn's master, which has one thread."""
    for store in list(_STORES):
        db = getattr(store._local, "db", None)
        if db is None:
            continue
        if db.in_transaction:
            log.warning("a fork in the middle of a transaction on %s: its connection goes on "
                        "in both processes", store.path)
            continue
        store._local.db = None
        db.close()


os.register_at_fork(before=_close_connections_before_fork)


class Store:
    def __init__(self, path: str, max_log_bytes: int = 0, busy_timeout: float = 10.0):
        self.path = path
        self.max_log_bytes = max_log_bytes
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        _STORES.add(self)
        self._waiting = Waiting()
        self._deliveries_pruned = 0.0  # when old webhook delivery ids were last forgotten
        # Told each stored log piece once committed: (job id, its offset, the bytes stored).
        self.log_written: Callable[[int, int, bytes], None] | None = None
        # Asked, inside the transaction that ends a job, where to notify of its end: the
        # notifications are queued in that same transaction, so a crash loses none.
        self.notify_targets: Callable[[Job], list[str]] | None = None
        # Whom a notification's URL reaches (its notifications are sent one at a time); left
        # NULL without one, and for the notifier to fill in (fill_receivers).
        self.notify_receiver: Callable[[str], str] | None = None
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        try:
            self._conn().executescript(SCHEMA)  # commits by itself
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {path}: {exc}") from exc
        self._migrate()
        self.instance = self._instance_id()

    def _migrate(self) -> None:
        """Add the columns that newer versions have to a database made by an older one."""
        have = {row["name"] for row in self._read("PRAGMA table_info(jobs)")}
        for column, decl in (("notify", "TEXT"), ("retries", "INTEGER NOT NULL DEFAULT 0"),
                             ("attempt", "INTEGER NOT NULL DEFAULT 0"),
                             ("log_base", "INTEGER NOT NULL DEFAULT 0"), ("run_key", "TEXT"),
                             ("cancel_requested", "INTEGER NOT NULL DEFAULT 0")):
            if column not in have:
                with self._tx() as db:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {decl}")
        if "fired_at" not in {row["name"] for row in self._read(
                "PRAGMA table_info(schedule_state)")}:
            with self._tx() as db:  # (a skip since the last job is not told apart: rare)
                db.execute("ALTER TABLE schedule_state ADD COLUMN fired_at REAL")
                db.execute("UPDATE schedule_state SET fired_at = last_fire "
                           "WHERE last_job IS NOT NULL")
        if "receiver" not in {row["name"] for row in self._read(
                "PRAGMA table_info(notifications)")}:
            with self._tx() as db:  # filled in by the notifier (fill_receivers)
                db.execute("ALTER TABLE notifications ADD COLUMN receiver TEXT")
        with self._tx() as db:
            db.execute("CREATE INDEX IF NOT EXISTS notifications_receiver "
                       "ON notifications (receiver, due)")
        made = self._read("SELECT sql FROM sqlite_master WHERE name = 'log_chunks'")[0][0]
        if "WITHOUT ROWID" in made.upper():
            with self._tx() as db:
                db.execute("ALTER TABLE log_chunks RENAME TO log_chunks_before")
                db.execute(LOG_TABLE)
                db.execute("INSERT INTO log_chunks SELECT job_id, offset, data "
                           "FROM log_chunks_before")
                db.execute("DROP TABLE log_chunks_before")

    def _instance_id(self) -> str:
        """A random name for this database, made once: it keeps the run ids that workers see
        unique even when several controllers (or a fresh database) use the same worker."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('instance', ?)",
                       (secrets.token_hex(4),))
            return db.execute("SELECT value FROM meta WHERE key = 'instance'").fetchone()[0]

    def run_id(self, job: Job) -> str:
        """The id a worker knows (this attempt of) a job by. The job's random key is part of it:
        a database restored from a backup (or one that lost its last commits) gives its ids to
        new jobs again, and a new job must not take a run of the old one for its own (a start
        the worker refuses as `exists` is followed as the job's run)."""
        suffix = f".{job.attempt}" if job.attempt else ""
        key = f"-{job.run_key}" if job.run_key else ""
        return f"{self.instance}-{job.id}{key}{suffix}"

    # --- connections ---------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT}")
            db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (BEGIN IMMEDIATE), committed or rolled back.
        Every SQLite error leaves as StoreError (a full disk, a lock held too long)."""
        try:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"database unavailable: {exc}") from exc
        try:
            yield db
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(db)
            raise StoreError(f"database write failed: {exc}") from exc
        except BaseException:
            self._rollback(db)
            raise

    @staticmethod
    def _rollback(db: sqlite3.Connection) -> None:
        """Roll back what is left: SQLite may have rolled back by itself (a full disk)."""
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # nothing left to undo

    def _read(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        try:
            return self._conn().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"database read failed: {exc}") from exc

    # --- jobs ----------------------------------------------------------------------------
    def create_job(self, target: str, variables: dict, selector: str | None, source: str,
                   timeout: float | None = None, notify: str | None = None,
                   retries: int = 0) -> tuple[Job, bool]:
        """A new queued job, or the identical one still queued (returned with True)."""
        vars_json = json.dumps(variables, sort_keys=True)
        key = (target, vars_json, selector)
        job, epoch = self._waiting.get(key)
        if job is not None:
            return job, True
        rows = self._read(SAME_WAITING, key)  # no write lock for a repeat
        coalesced = bool(rows)
        if not coalesced:
            with self._tx() as db:
                row, coalesced = self._queue(db, key, source, timeout, notify, retries)
                rows = [row]
        job = Job.from_row(rows[0])
        self._waiting.remember(key, job, epoch)
        return job, coalesced

    @staticmethod
    def _queue(db: sqlite3.Connection, key: tuple, source: str, timeout: float | None = None,
               notify: str | None = None, retries: int = 0) -> tuple[sqlite3.Row, bool]:
        """In a write transaction: the waiting job for `key` (target, vars JSON, selector), or a
        new one; True if it was there already."""
        row = db.execute(SAME_WAITING, key).fetchone()  # again, locked
        if row is not None:
            return row, True
        cur = db.execute(
            "INSERT INTO jobs (target, vars, selector, state, source, timeout, created_at, "
            "notify, retries, run_key) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
            (*key, source, timeout, time.time(), notify, retries, secrets.token_hex(4)))
        return db.execute("SELECT * FROM jobs WHERE id = ?", (cur.lastrowid,)).fetchone(), False

    def build_since(self, target: str, selector: str | None, since: float,
                    recent: int = 200) -> Job | None:
        """A build of `target` without variables for `selector` that will see the files as
        they were at `since`: one still queued (if handed to a worker, create_job no longer
        joins it) or one that started at or after `since` and was not cancelled. Among the
        target's `recent` newest jobs only: an older one cannot have started after `since`
        unless jobs pile up, and then a second build is the safe answer."""
        rows = self._read(
            "SELECT * FROM (SELECT * FROM jobs WHERE target = ? ORDER BY id DESC LIMIT ?) "
            "WHERE vars = '{}' AND selector IS ? AND (state = 'queued' OR (started_at >= ? "
            "AND state IN ('running', 'succeeded', 'failed'))) ORDER BY id DESC LIMIT 1",
            (target, recent, selector, since))
        return Job.from_row(rows[0]) if rows else None

    def get_job(self, job_id: int) -> Job | None:
        rows = self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return Job.from_row(rows[0]) if rows else None

    def list_jobs(self, state: str | None = None, target: str | None = None, limit: int = 50,
                  before: int | None = None) -> list[Job]:
        """Newest first."""
        where, args = [], []
        for column, value in (("state", state), ("target", target)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if before is not None:
            where.append("id < ?")
            args.append(before)
        sql = "SELECT * FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        return [Job.from_row(r) for r in self._read(sql, (*args, limit))]

    def left_over(self) -> list[Job]:
        """What a previous controller left for the next one, all of it, oldest first: running
        jobs, and the queued ones it had handed to a worker (claimed) or was asked to cancel.
        (A long queue behind them is not read: its jobs are dispatched as usual.)"""
        rows = self._read(
            "SELECT * FROM jobs WHERE state = 'running' UNION ALL SELECT * FROM jobs WHERE "
            "state = 'queued' AND (worker IS NOT NULL OR cancel_requested) ORDER BY id")
        return [Job.from_row(r) for r in rows]

    def dispatchable(self, after: int = 0, limit: int = 200,
                     skip_targets: Collection[str] = ()) -> list[Job]:
        """Queued jobs not yet handed to a worker, oldest first, with ids above `after`, except
        those of `skip_targets` (being built: a long queue of them is passed over in SQLite, not
        read page by page)."""
        skip = list(skip_targets)[:MAX_SKIPPED_TARGETS]
        sql = "SELECT * FROM jobs WHERE state = 'queued' AND worker IS NULL AND id > ?"
        if skip:
            sql += f" AND target NOT IN ({', '.join('?' * len(skip))})"
        rows = self._read(sql + " ORDER BY id LIMIT ?", (after, *skip, limit))
        return [Job.from_row(r) for r in rows]

    def previous_state(self, target: str, before: int) -> JobState | None:
        """How the last ended job of `target` before job `before` ended."""
        rows = self._read("SELECT state FROM jobs WHERE target = ? AND id < ? AND state NOT IN "
                          "('queued', 'running') ORDER BY id DESC LIMIT 1", (target, before))
        return JobState(rows[0][0]) if rows else None

    def claim(self, job_id: int, worker: str) -> bool:
        """Record that `worker` is being asked to start the job (it stays `queued` until the
        worker accepts). False if the job is no longer waiting, or a cancel was recorded for it
        (`request_cancel`: the caller ends it)."""
        with self._waiting.moving(job_id), self._tx() as db:
            cur = db.execute("UPDATE jobs SET worker = ? WHERE id = ? AND state = 'queued' "
                             "AND worker IS NULL AND cancel_requested = 0", (worker, job_id))
        return cur.rowcount == 1

    def request_cancel(self, job_id: int) -> None:
        """Record that a cancel was asked for a job a worker has (started, or being started),
        so that a controller that restarts before the worker got it still delivers it."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? "
                       "AND state IN ('queued', 'running')", (job_id,))

    def unclaim(self, job_id: int) -> bool:
        """Back to waiting, for a start the worker did not accept."""
        with self._tx() as db:
            cur = db.execute("UPDATE jobs SET worker = NULL WHERE id = ? AND state = 'queued'",
                             (job_id,))
            return cur.rowcount == 1

    def retry(self, job_id: int, why: str) -> bool:
        """Queue a lost job again if it has retries left; its log notes the attempt."""
        with self._waiting.moving(job_id), self._tx() as db:
            row = db.execute("SELECT attempt, retries, log_size FROM jobs WHERE id = ? AND "
                             "state IN ('queued', 'running')", (job_id,)).fetchone()
            if row is None or row["attempt"] >= row["retries"]:
                return False
            note = (f"\n*** maketrigger: attempt {row['attempt'] + 1} lost ({why}); "
                    f"retrying ({row['attempt'] + 2} of {row['retries'] + 1})\n").encode()
            db.execute("INSERT INTO log_chunks (job_id, offset, data) VALUES (?, ?, ?)",
                       (job_id, row["log_size"], note))
            size = row["log_size"] + len(note)
            db.execute("UPDATE jobs SET state = 'queued', worker = NULL, started_at = NULL, "
                       "attempt = attempt + 1, log_size = ?, log_base = ? WHERE id = ?",
                       (size, size, job_id))
        if self.log_written is not None:
            self.log_written(job_id, row["log_size"], note)
        return True

    def mark_running(self, job_id: int, started_ago: float | None = None) -> bool:
        """The worker accepted the job; False if it was cancelled meanwhile. `started_ago`:
        how long before its report the worker says the run started (see reported_time; never
        before the job was made, whatever a worker's clock did meanwhile)."""
        with self._waiting.moving(job_id), self._tx() as db:
            cur = db.execute("UPDATE jobs SET state = 'running', "
                             "started_at = MAX(created_at, ?) WHERE id = ? AND state = 'queued'",
                             (reported_time(started_ago), job_id))
        return cur.rowcount == 1

    def finish(self, job_id: int, state: JobState, exit_code: int | None = None,
               error: str | None = None, *, only_waiting: bool = False,
               note: str | None = None, ended_ago: float | None = None) -> Job | None:
        """Move a queued (or running) job to an end state: the ended job, or None if it was not
        in one of those states. `only_waiting`: only a queued job no worker was asked to start
        (a claimed one may already run make). `note`: a line added to its log, in the same
        transaction (the controller's word on an end no worker wrote into the log).
        `ended_ago`: how long before its report the worker says the run ended (see
        reported_time)."""
        assert state.ended
        states = "('queued') AND worker IS NULL" if only_waiting else "('queued', 'running')"
        with self._waiting.moving(job_id), self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET state = ?, exit_code = ?, error = ?, "
                "finished_at = MAX(COALESCE(started_at, created_at), ?) "
                f"WHERE id = ? AND state IN {states}",
                (state.value, exit_code, error, reported_time(ended_ago), job_id))
            if cur.rowcount != 1:
                return None
            if note:
                size = db.execute("SELECT log_size FROM jobs WHERE id = ?",
                                  (job_id,)).fetchone()[0]
                data = (note if size else note.lstrip("\n")).encode()
                db.execute("INSERT INTO log_chunks (job_id, offset, data) VALUES (?, ?, ?)",
                           (job_id, size, data))
                db.execute("UPDATE jobs SET log_size = ? WHERE id = ?", (size + len(data), job_id))
            job = Job.from_row(db.execute("SELECT * FROM jobs WHERE id = ?",
                                          (job_id,)).fetchone())
            targets = self._notify_targets(job)
            if targets:
                db.executemany("INSERT INTO notifications (job_id, url, receiver, due) "
                               "VALUES (?, ?, ?, ?)", [(job_id, url, receiver, time.time())
                                                       for url, receiver in targets])
        return job

    def _notify_targets(self, job: Job) -> list[tuple[str, str | None]]:
        """Where to notify of the job's end, each URL with its receiver (None: for the
        notifier to fill in); never fails the job's end itself."""
        if self.notify_targets is None:
            return []
        try:
            urls = self.notify_targets(job)
        except Exception:
            log.exception("cannot tell whether to notify of job %s", job.id)
            return []
        targets = []
        for url in urls:
            try:
                receiver = self.notify_receiver(url) if self.notify_receiver else None
            except Exception:
                log.exception("cannot tell whom a notification of job %s reaches", job.id)
                receiver = None
            targets.append((url, receiver))
        return targets

    def prune_jobs(self, keep: int, batch_bytes: int = 64 * 1024 * 1024,
                   after: int = 0) -> tuple[int, int]:
        """Forget ended jobs older than the newest `keep` jobs, with their logs, oldest first
        (from id `after` on), as many as about `batch_bytes` of log in one transaction (so no
        write waits long): (how many were forgotten, the id to go on `after`; 0 when done).
        A job with a notification still to send stays until it is sent; a queued or running
        one stays whatever its age, and so does a job whose target's next job has not ended
        (TRIGGER_NOTIFY_ON=change compares that job's end with it). The candidates are read
        outside the write transaction, which only checks them again and deletes."""
        cut = self._read("SELECT id FROM jobs ORDER BY id DESC LIMIT 1 OFFSET ?", (keep,))
        if not cut:
            return 0, 0
        rows = self._read(
            f"SELECT id, log_size FROM jobs AS j WHERE id > ? AND id <= ? AND {_PRUNABLE} "
            "ORDER BY id LIMIT 500", (after, cut[0][0]))
        if not rows:
            return 0, 0
        ids, size = [], 0
        for row in rows:
            if ids and size + row["log_size"] > batch_bytes:
                break
            ids.append(row["id"])
            size += row["log_size"]
        last = ids[-1]  # where the next batch goes on
        marks = ",".join("?" * len(ids))
        with self._tx() as db:  # (what changed since the read stays)
            ids = [r[0] for r in db.execute(
                f"SELECT id FROM jobs AS j WHERE id IN ({marks}) AND {_PRUNABLE}", ids)]
            if ids:
                marks = ",".join("?" * len(ids))
                db.execute(f"DELETE FROM log_chunks WHERE job_id IN ({marks})", ids)
                db.execute(f"DELETE FROM jobs WHERE id IN ({marks})", ids)
        return len(ids), last

    # --- notifications (queued by finish) -----------------------------------------------
    def due_notifications(self, now: float, limit: int = 100,
                          receiver: str | None = None) -> list[tuple[int, int, str, int]]:
        """(id, job id, url, attempts so far) of the notifications due by `now`, oldest first;
        with `receiver`, those to that receiver only."""
        where = "due <= ?" if receiver is None else "receiver = ? AND due <= ?"
        args = (now,) if receiver is None else (receiver, now)
        return [tuple(row) for row in self._read(
            f"SELECT id, job_id, url, attempts FROM notifications WHERE {where} "
            "ORDER BY due, id LIMIT ?", (*args, limit))]

    def due_receivers(self, now: float, skip: Collection[str] = (),
                      limit: int = 100) -> list[str]:
        """The receivers with notifications due by `now`, the one with the oldest first,
        except those in `skip`."""
        skip = list(skip)
        rows = self._read(
            "SELECT receiver FROM notifications WHERE due <= ? AND receiver IS NOT NULL"
            + (f" AND receiver NOT IN ({', '.join('?' * len(skip))})" if skip else "")
            + " GROUP BY receiver ORDER BY MIN(due) LIMIT ?", (now, *skip, limit))
        return [row[0] for row in rows]

    def fill_receivers(self, receiver_of: Callable[[str], str]) -> int:
        """Set the receiver of notifications queued before it was recorded; how many."""
        rows = self._read("SELECT id, url FROM notifications WHERE receiver IS NULL")
        if rows:
            with self._tx() as db:
                db.executemany("UPDATE notifications SET receiver = ? WHERE id = ?",
                               [(receiver_of(row["url"]), row["id"]) for row in rows])
        return len(rows)

    def next_notification_due(self, after: float = -math.inf) -> float | None:
        """When the first notification due later than `after` is due."""
        rows = self._read("SELECT MIN(due) FROM notifications WHERE due > ?", (after,))
        return rows[0][0] if rows else None

    def notification_done(self, notification_id: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM notifications WHERE id = ?", (notification_id,))

    def notification_later(self, notification_id: int, attempts: int, due: float) -> None:
        with self._tx() as db:
            db.execute("UPDATE notifications SET attempts = ?, due = ? WHERE id = ?",
                       (attempts, due, notification_id))

    # --- schedules --------------------------------------------------------------------------
    def schedule_state(self, key: str) -> tuple[float | None, int | None]:
        """(latest fire time dealt with, fired or skipped; last job id) of a schedule."""
        rows = self._read("SELECT last_fire, last_job FROM schedule_state WHERE key = ?", (key,))
        return (rows[0][0], rows[0][1]) if rows else (None, None)

    def schedule_fired(self, key: str) -> tuple[float | None, int | None]:
        """(fire time, job id) of the schedule's last job, or (None, None)."""
        rows = self._read("SELECT fired_at, last_job FROM schedule_state WHERE key = ?", (key,))
        return (rows[0][0], rows[0][1]) if rows else (None, None)

    def claim_fire(self, key: str, fire_time: float) -> bool:
        """Record `fire_time` as the schedule's last, without a job (a fire time skipped);
        False if it (or a later one) was already."""
        with self._tx() as db:
            return self._claim_fire(db, key, fire_time)

    @staticmethod
    def _claim_fire(db: sqlite3.Connection, key: str, fire_time: float) -> bool:
        db.execute("INSERT OR IGNORE INTO schedule_state (key) VALUES (?)", (key,))
        cur = db.execute("UPDATE schedule_state SET last_fire = ? WHERE key = ? "
                         "AND (last_fire IS NULL OR last_fire < ?)", (fire_time, key, fire_time))
        return cur.rowcount == 1

    def fire_schedule(self, key: str, fire_time: float, target: str,
                      variables: dict) -> tuple[Job, bool] | None:
        """Claim the schedule's `fire_time` and queue its job (or join the identical waiting
        one) in one transaction: a fire time is never recorded without its job, so a database
        error or a crash between the two cannot lose it, and never queued twice. None if it
        (or a later one) was claimed already."""
        key_of_job = (target, json.dumps(variables, sort_keys=True), None)
        with self._tx() as db:
            if not self._claim_fire(db, key, fire_time):
                return None
            row, coalesced = self._queue(db, key_of_job, "schedule")
            db.execute("UPDATE schedule_state SET last_job = ?, fired_at = ? WHERE key = ?",
                       (row["id"], fire_time, key))
        return Job.from_row(row), coalesced

    # --- webhook deliveries ---------------------------------------------------------------
    def record_delivery(self, provider: str, *keys: str) -> bool:
        """Remember a webhook delivery by its keys (its id; a digest of its body), in one
        transaction; False, recording none, if any was seen before (a redelivery, a replay).
        Keys older than DELIVERY_DAYS are forgotten (at most once an hour): git hosts
        redeliver only recent deliveries (GitHub: the past 3 days)."""
        try:
            with self._tx() as db:
                self._record_delivery(db, provider, keys)
        except _SeenBefore:
            return False
        return True

    def queue_delivery(self, provider: str, keys: Sequence[str], target: str,
                       source: str) -> tuple[Job, bool] | None:
        """Record a webhook delivery by its keys and queue its job (or join the identical
        waiting one) in one transaction: a delivery is never recorded without its job, so a
        crash between the two cannot make the host's redelivery look like a duplicate. None,
        recording nothing, if any key was seen before."""
        try:
            with self._tx() as db:
                self._record_delivery(db, provider, keys)
                row, coalesced = self._queue(db, (target, "{}", None), source)
                db.executemany("UPDATE deliveries SET job_id = ? WHERE provider = ? "
                               "AND delivery = ?", [(row["id"], provider, key) for key in keys])
        except _SeenBefore:
            return None
        return Job.from_row(row), coalesced

    def _record_delivery(self, db: sqlite3.Connection, provider: str,
                         keys: Sequence[str]) -> None:
        now = time.time()
        if now - self._deliveries_pruned > 3600:
            db.execute("DELETE FROM deliveries WHERE received_at < ?",
                       (now - DELIVERY_DAYS * 86400,))
            self._deliveries_pruned = now
        for key in keys:
            cur = db.execute("INSERT OR IGNORE INTO deliveries (provider, delivery, "
                             "received_at) VALUES (?, ?, ?)", (provider, key, now))
            if cur.rowcount != 1:
                raise _SeenBefore  # rolls back the keys inserted before it

    def delivery_seen(self, provider: str, key: str) -> bool:
        return bool(self._read("SELECT 1 FROM deliveries WHERE provider = ? AND delivery = ?",
                               (provider, key)))

    # --- logs ----------------------------------------------------------------------------
    def append_log(self, job_id: int, offset: int, data: bytes) -> int:
        """Store the bytes the worker sent from `offset` of its log; returns how many of them
        were new. Past max_log_bytes the log ends with TRUNCATION_MARKER and drops the rest."""
        return self.append_logs(job_id, offset, [data])

    def append_logs(self, job_id: int, offset: int, pieces: list[bytes]) -> int:
        """append_log for consecutive pieces from `offset`, in one transaction (each its own
        row, so that a read of the log never has to load more than one piece at a time)."""
        stored: list[tuple[int, bytes]] = []
        with self._tx() as db:
            row = db.execute("SELECT log_size, log_truncated FROM jobs WHERE id = ?",
                             (job_id,)).fetchone()
            if row is None or row["log_truncated"]:
                return 0
            size = row["log_size"]
            if offset > size:
                raise ValueError(f"log of job {job_id}: gap from {size} to {offset}")
            truncated = False
            for piece in pieces:
                data = piece[size - offset:]  # what was stored already is skipped
                offset += len(piece)
                if not data:
                    continue
                if self.max_log_bytes and size + len(data) > self.max_log_bytes:
                    data = data[: max(0, self.max_log_bytes - size)] + TRUNCATION_MARKER
                    truncated = True
                db.execute("INSERT INTO log_chunks (job_id, offset, data) VALUES (?, ?, ?)",
                           (job_id, size, data))
                stored.append((size, data))
                size += len(data)
                if truncated:
                    break
            if not stored:
                return 0
            db.execute("UPDATE jobs SET log_size = ?, log_truncated = ? WHERE id = ?",
                       (size, truncated, job_id))
        if self.log_written is not None:
            for at, data in stored:
                self.log_written(job_id, at, data)
        return sum(len(data) for _, data in stored)

    def read_log(self, job_id: int, offset: int = 0, limit: int = 1 << 20) -> bytes:
        """At most `limit` bytes of a job's stored log from byte `offset` (fewer if that is all
        there is)."""
        parts: list[bytes] = []
        got = 0
        while got < limit:
            start = offset + got
            rows = self._read(
                "SELECT offset, data FROM log_chunks WHERE job_id = ? AND offset <= ? "
                "AND offset + length(data) > ? ORDER BY offset DESC LIMIT 1",
                (job_id, start, start))
            if not rows:
                break
            skip, piece = start - rows[0]["offset"], rows[0]["data"]
            if skip or len(piece) > limit - got:
                piece = piece[skip:skip + limit - got]
            parts.append(piece)
            got += len(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)  # one piece: not copied

    def integrity_ok(self) -> bool:
        return self._read("PRAGMA integrity_check")[0][0] == "ok"
