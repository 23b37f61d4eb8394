"""Daemon threads reused between calls, and never a call waiting behind another."""

import threading
import time

from worker.threads import DaemonThreads


def test_a_blocked_call_never_holds_up_the_next_and_idle_threads_are_reused():
    pool = DaemonThreads("t")
    release, names = threading.Event(), []
    started = [threading.Event() for _ in range(3)]
    for e in started:  # three calls that block: three threads
        pool.submit(lambda e=e: (names.append(threading.current_thread().name), e.set(),
                                 release.wait(10)))
    assert all(e.wait(5) for e in started)
    release.set()
    deadline = time.monotonic() + 5
    while pool._idle < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    done = threading.Event()
    for _ in range(50):  # later calls, one after another, run on those threads again
        done.clear()
        pool.submit(lambda: (names.append(threading.current_thread().name), done.set()))
        assert done.wait(5)
    assert len(set(names)) == 3 and all(t.daemon for t in threading.enumerate()
                                        if t.name.startswith("t-"))


def test_an_error_in_a_call_is_logged_and_the_thread_serves_on(caplog):
    pool = DaemonThreads("e")
    done = threading.Event()
    pool.submit(lambda: 1 / 0)
    deadline = time.monotonic() + 5
    while pool._idle < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    pool.submit(done.set)  # on the same thread
    assert done.wait(5)
    assert "ZeroDivisionError" in caplog.text and pool._made == 1
