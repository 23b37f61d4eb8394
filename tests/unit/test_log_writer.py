"""Storing a followed log behind its reading: in order, through database errors, and stopped by
a gap or by shutdown."""

import sqlite3
import threading
import time

import pytest

from trigger_server import log_writer
from trigger_server.log_writer import LogWriter
from trigger_server.store import Store, StoreError


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "t.db"), busy_timeout=0.2)


@pytest.fixture
def job(store):
    return store.create_job("big", {}, None, "api")[0]


def rows(store, job):
    return sqlite3.connect(store.path).execute(
        "SELECT offset, data FROM log_chunks WHERE job_id = ? ORDER BY offset",
        (job.id,)).fetchall()


def test_pieces_are_stored_in_order_and_close_waits_for_them(store, job):
    told = []
    writer = LogWriter(store, job.id, lambda: told.append(1), threading.Event())
    offset, expected = 0, b""
    for i in range(50):
        piece = b"%d\n" % i * (i + 1)
        writer.put(offset, piece)
        offset, expected = offset + len(piece), expected + piece
    writer.close()
    assert store.read_log(job.id, 0, limit=1 << 30) == expected
    assert 1 <= len(told) <= 50  # once per transaction: pieces waiting together share one
    assert not writer._thread.is_alive()


def test_pieces_waiting_together_share_a_transaction_but_not_a_row(store, job):
    told = []
    writer = LogWriter(Store(store.path, busy_timeout=10), job.id, lambda: told.append(1),
                       threading.Event())
    locker = sqlite3.connect(store.path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # the first piece waits: the next three queue up
    writer.put(0, b"a\n")
    time.sleep(0.2)
    for offset, piece in ((2, b"b\n"), (4, b"c\n"), (6, b"d\n")):
        writer.put(offset, piece)
    locker.execute("ROLLBACK")
    writer.close()
    assert rows(store, job) == [(0, b"a\n"), (2, b"b\n"), (4, b"c\n"), (6, b"d\n")]
    assert len(told) == 2


def test_a_database_error_is_retried_until_the_pieces_are_stored(store, job, monkeypatch):
    monkeypatch.setattr(log_writer, "RETRY", 0.05)
    writer = LogWriter(store, job.id, lambda: None, threading.Event())
    locker = sqlite3.connect(store.path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # longer than the store's busy_timeout: a StoreError
    for offset, piece in ((0, b"a\n"), (2, b"b\n"), (4, b"c\n")):
        writer.put(offset, piece)
    time.sleep(0.8)
    assert writer._thread.is_alive() and writer._error is None
    locker.execute("ROLLBACK")
    writer.close()
    assert store.read_log(job.id) == b"a\nb\nc\n"


def test_shutdown_stops_the_retries_and_the_error_reaches_the_follower(store, job):
    stop = threading.Event()
    writer = LogWriter(store, job.id, lambda: None, stop)
    locker = sqlite3.connect(store.path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        writer.put(0, b"a\n")
        stop.set()
        deadline = time.monotonic() + 10
        while writer._error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(StoreError):
            writer.put(2, b"b\n")
        with pytest.raises(StoreError):
            writer.close()
    finally:
        locker.execute("ROLLBACK")
    assert store.read_log(job.id) == b""  # the follower catches up from here on its next start


def test_a_gap_stops_the_storing_and_nothing_after_it_is_stored(store, job):
    writer = LogWriter(store, job.id, lambda: None, threading.Event())
    writer.put(5, b"after a gap\n")
    writer._thread.join(0.5)
    with pytest.raises(ValueError, match="gap"):
        writer.close()
    assert rows(store, job) == []
