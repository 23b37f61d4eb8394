"""One controller per database: the lock, its wait, and a stop asked for during the wait."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from trigger_server import db_lock


def test_a_second_holder_waits_then_gets_the_lock_and_sigterm_is_as_before(tmp_path):
    path = str(tmp_path / "t.db")
    first = db_lock.hold(path)
    threading.Timer(0.5, os.close, (first,)).start()
    before = signal.getsignal(signal.SIGTERM)
    started = time.monotonic()
    second = db_lock.hold(path, wait=10)
    try:
        assert time.monotonic() - started >= 0.4
        assert signal.getsignal(signal.SIGTERM) is before
        with open(path + ".lock") as f:
            assert f.read().strip() == str(os.getpid())
    finally:
        os.close(second)


def test_a_holder_that_gives_up_says_who_holds_it(tmp_path):
    path = str(tmp_path / "t.db")
    held = db_lock.hold(path)
    try:
        with pytest.raises(db_lock.DatabaseInUse, match=f"pid {os.getpid()}"):
            db_lock.hold(path, wait=0.3)
    finally:
        os.close(held)


def test_sigterm_stops_a_process_waiting_for_the_lock(tmp_path):
    """As `docker stop` does to a controller waiting for its predecessor: it exits now, not
    once the lock is free (then serving in the middle of its shutdown) or after the wait."""
    path = str(tmp_path / "t.db")
    held = db_lock.hold(path)
    try:
        waiting = subprocess.Popen(
            [sys.executable, "-c", "import logging, signal, sys; logging.basicConfig(); "
             # as gunicorn's worker: its SIGTERM handler only marks it as stopping
             "signal.signal(signal.SIGTERM, lambda *_: print('marked')); "
             "from trigger_server import db_lock; db_lock.hold(sys.argv[1]); print('held')",
             path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = waiting.stderr.readline()  # (its handler is in place before it says so)
        assert "in use by another controller" in line, line
        stopped = time.monotonic()
        waiting.send_signal(signal.SIGTERM)
        out, _ = waiting.communicate(timeout=10)
        assert waiting.returncode == 0 and "held" not in out and "marked" not in out
        assert time.monotonic() - stopped < 2
    finally:
        os.close(held)
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
