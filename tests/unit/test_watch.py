"""The workspace watcher's own loop (its events end to end: tests/integration/test_watch.py)."""

import threading
import time
import types

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
