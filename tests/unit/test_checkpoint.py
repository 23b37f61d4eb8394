"""The background WAL checkpoint: stored log reaches the database file without the writer
copying it there itself."""

import os
import time

import pytest

from trigger_server.checkpoint import Checkpointer
from trigger_server.store import Store

MiB = 1 << 20


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "t.db"))


def write_log(store, mib):
    job, _ = store.create_job("big", {}, None, "api")
    for i in range(mib):
        store.append_log(job.id, i * MiB, b"x" * MiB)
    return job


def test_the_thread_copies_the_stored_log_into_the_database_file(store):
    checkpointer = Checkpointer(store.path, every=MiB)
    store.log_written = lambda job_id, offset, data: checkpointer.wrote(len(data))
    checkpointer.start()
    try:
        job = write_log(store, 6)
        deadline = time.monotonic() + 10
        while os.path.getsize(store.path) < 5 * MiB and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.path.getsize(store.path) >= 5 * MiB
        assert checkpointer.done >= 1
        assert store.read_log(job.id, 0, 6 * MiB) == b"x" * (6 * MiB)
    finally:
        checkpointer.stop()
    assert not checkpointer._thread.is_alive()


def test_without_it_the_log_waits_in_the_wal_for_the_writers_autocheckpoint(store):
    write_log(store, 6)  # below wal_autocheckpoint's 10,000 pages
    assert os.path.getsize(store.path) < MiB
    assert os.path.getsize(store.path + "-wal") >= 6 * MiB


def test_it_is_woken_only_once_enough_was_written(tmp_path):
    checkpointer = Checkpointer(str(tmp_path / "t.db"), every=MiB)
    checkpointer.wrote(MiB - 1)
    assert not checkpointer._wake.is_set()
    checkpointer.wrote(1)
    assert checkpointer._wake.is_set()


def test_small_commits_are_checkpointed_too_once_a_second_or_so(store):
    """Jobs without log: before, their frames waited for the writers' autocheckpoint, and the
    request that reached it synced ~40 MB of WAL (~190 ms here)."""
    checkpointer = Checkpointer(store.path, every=1 << 40, interval=0.1)
    size = os.path.getsize(store.path)
    checkpointer.start()
    try:
        for n in range(300):
            job, _ = store.create_job("site", {"N": str(n)}, None, "api")
        deadline = time.monotonic() + 10  # the file grows while the checkpoint runs, and
        while ((os.path.getsize(store.path) <= size or checkpointer.done < 1)  # it counts after
               and time.monotonic() < deadline):
            time.sleep(0.05)
        assert os.path.getsize(store.path) > size and checkpointer.done >= 1
    finally:
        checkpointer.stop()


def test_an_idle_database_is_not_checkpointed_again_and_again(store):
    checkpointer = Checkpointer(store.path, every=1 << 40, interval=0.05)
    checkpointer.start()
    try:
        time.sleep(0.6)  # a dozen intervals without a commit
    finally:
        checkpointer.stop()
    assert checkpointer.done <= 1
