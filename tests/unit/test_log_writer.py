"""Storing a followed log behind its reading: in order, and stopped by the first failure."""

import sqlite3
import time

import pytest

from trigger_server.log_writer import LogWriter
from trigger_server.store import Store, StoreError


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "t.db"), busy_timeout=0.2)


def test_pieces_are_stored_in_order_and_close_waits_for_them(store):
    job, _ = store.create_job("big", {}, None, "api")
    told = []
    writer = LogWriter(store, job.id, lambda: told.append(1))
    offset = 0
    for i in range(50):
        piece = b"%d\n" % i * (i + 1)
        writer.put(offset, piece)
        offset += len(piece)
    writer.close()
    assert store.read_log(job.id, 0, limit=1 << 30) == b"".join(b"%d\n" % i * (i + 1)
                                                               for i in range(50))
    assert 1 <= len(told) <= 50  # once per transaction: pieces waiting together share one
    assert not writer._thread.is_alive()


def test_the_first_failure_stops_the_storing_and_reaches_the_follower(store):
    job, _ = store.create_job("big", {}, None, "api")
    writer = LogWriter(store, job.id, lambda: None)
    locker = sqlite3.connect(store.path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # locked for longer than the store's busy_timeout
    try:
        for offset, piece in ((0, b"a\n"), (2, b"b\n"), (4, b"c\n")):
            writer.put(offset, piece)  # queued while the first waits for the lock
        deadline = time.monotonic() + 10
        while writer._error is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        locker.execute("ROLLBACK")
    with pytest.raises(StoreError):
        writer.put(6, b"d\n")
    with pytest.raises(StoreError):
        writer.close()
    assert store.read_log(job.id) == b""  # nothing after the failed piece: no gap, no reorder
    assert store.get_job(job.id).log_size == 0


def test_pieces_waiting_together_are_stored_as_one(store):
    job, _ = store.create_job("big", {}, None, "api")
    locker = sqlite3.connect(store.path, isolation_level=None)
    writer = LogWriter(Store(store.path, busy_timeout=10), job.id, lambda: None)
    locker.execute("BEGIN EXCLUSIVE")  # the first piece waits: the next three queue up
    writer.put(0, b"a\n")
    time.sleep(0.2)
    for offset, piece in ((2, b"b\n"), (4, b"c\n"), (6, b"d\n")):
        writer.put(offset, piece)
    locker.execute("ROLLBACK")
    writer.close()
    rows = sqlite3.connect(store.path).execute(
        "SELECT offset, data FROM log_chunks WHERE job_id = ? ORDER BY offset",
        (job.id,)).fetchall()
    assert rows == [(0, b"a\n"), (2, b"b\nc\nd\n")]
