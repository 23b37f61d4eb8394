"""File watching: the worker's watcher loop, and the controller taking its requests (end to
end: tests/integration/test_watch.py)."""

import threading
import time
import types

from trigger_server.workers import Worker, WorkerClient, WorkerPool
from worker.watch import Watcher, parse


class CountingEvent(threading.Event):
    def __init__(self):
        super().__init__()
        self.waits = 0

    def wait(self, timeout=None):
        self.waits += 1
        return super().wait(timeout)


def test_a_zero_debounce_sleeps_until_a_change_instead_of_spinning(tmp_path):
    """WORKER_WATCH_DEBOUNCE=0 (allowed) kept an idle worker at a whole CPU: the loop waited
    `debounce` seconds, that is not at all, over and over."""
    idle = types.SimpleNamespace(active=lambda: [], last_end=0.0)
    watcher = Watcher(str(tmp_path), parse("*.txt hello"), idle, debounce=0)
    watcher._wake = CountingEvent()
    try:
        watcher.start()
        time.sleep(0.5)
        assert watcher._wake.waits <= 3  # asleep, not thousands of looks
        (tmp_path / "a.txt").write_text("x")
        deadline = time.monotonic() + 10
        while not watcher.pending(0) and time.monotonic() < deadline:
            time.sleep(0.05)
        # (with no debounce, the file's create and its write may each request it)
        assert {e["target"] for e in watcher.pending(0)} == {"hello"}
    finally:
        watcher.stop()


def test_a_request_says_how_long_ago_its_files_changed(tmp_path):
    """By the monotonic clock, as each answer is given: the controller places the change on
    its own clock by it (trigger_server.dispatch.changed_here)."""
    idle = types.SimpleNamespace(active=lambda: [], last_end=0.0)
    watcher = Watcher(str(tmp_path), parse("*.txt hello"), idle, debounce=0.2)
    try:
        watcher.start()
        time.sleep(0.3)
        (tmp_path / "a.txt").write_text("x")
        deadline = time.monotonic() + 10
        while not watcher.pending(0) and time.monotonic() < deadline:
            time.sleep(0.05)
        (first,) = watcher.pending(0)
        time.sleep(0.2)
        (later,) = watcher.pending(0)
        assert set(first) == {"seq", "target", "paths", "at", "changed_at", "changed_ago"}
        assert 0.2 <= first["changed_ago"] < 5
        assert later["changed_ago"] >= first["changed_ago"] + 0.2
        assert first["changed_at"] <= time.time() - 0.2
    finally:
        watcher.stop()


def test_a_file_change_the_database_could_not_queue_is_taken_again(tmp_path):
    """The watch request was acknowledged before it was queued: a locked database lost it
    (the worker forgets what the controller acknowledged at its next health check)."""
    from trigger_server.store import StoreError

    pool = WorkerPool([], WorkerClient("token"))
    worker = Worker(url="http://w:8000", name="w", configured="http://w:8000", healthy=True)
    queued, locked = [], [True]

    def on_watch(w, event):
        if locked[0]:
            raise StoreError("database unavailable: database is locked")
        queued.append(event["seq"])
    pool.on_watch = on_watch
    watch = {"boot": "b1", "events": [{"seq": 1, "target": "site"}, {"seq": 2, "target": "pdf"}]}
    pool._take_watch_events(worker, watch)
    assert worker.watch_ack == 0 and queued == []  # asked for again at the next check
    locked[0] = False
    pool._take_watch_events(worker, watch)
    assert worker.watch_ack == 2 and queued == [1, 2]
