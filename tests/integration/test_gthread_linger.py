"""The servers' gunicorn worker class (worker/gthread_linger.py) under a real gunicorn: a
kept-alive client's next request is served by the thread that answered the last one, without
going back to the pool; a client that never pauses does not keep the pool from another; and a
new connection does not wait for a lingering thread's linger to end."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .procs import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def serve(tmp_path):
    """serve(threads) -> port of tests/integration/linger_app.py under gunicorn."""
    procs = []

    def start(threads: int):
        port = free_port()
        log = open(tmp_path / f"gunicorn-{port}.log", "wb")  # noqa: SIM115 (closed below)
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-k", "tests.integration.linger_app.LongLinger",
             "--threads", str(threads), "--no-control-socket", "-b", f"127.0.0.1:{port}",
             "tests.integration.linger_app:app"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        procs.append((proc, log))

        def answers():  # on a connection that is closed at once: no request of it comes later
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", "/", headers={"Connection": "close"})
                conn.getresponse().read()
                return True
            except OSError:
                assert proc.poll() is None, (tmp_path / f"gunicorn-{port}.log").read_text()
                return False
            finally:
                conn.close()

        wait_for(answers, timeout=20, what="gunicorn to answer")
        return port

    yield start
    for proc, log in procs:
        os.killpg(proc.pid, 15)
        proc.wait(20)
        log.close()


def get(conn: http.client.HTTPConnection, path: str = "/") -> tuple[int, int, int]:
    """(serving thread, request number, connections handed to the pool so far); "/slow"
    takes 50 ms."""
    conn.request("GET", path)
    resp = conn.getresponse()
    assert resp.status == 200
    thread, number, handed = resp.read().split()
    return int(thread), int(number), int(handed)


def test_a_kept_alive_clients_requests_are_served_by_the_thread_that_answered(serve):
    port = serve(threads=4)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    answers = [get(conn) for _ in range(60)]
    conn.close()
    assert len({thread for thread, _, _ in answers}) == 1
    # Handed to the pool for its first request only (plain gthread: for each of the 60).
    assert answers[-1][2] == answers[0][2]


def test_a_connection_that_a_free_thread_takes_ends_no_linger(serve):
    port = serve(threads=4)
    first = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    thread, _, _ = get(first)
    time.sleep(0.2)  # its thread lingers on it; three threads are free
    other = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    _, _, handed = get(other)  # (handed to the pool: a free thread takes it)
    other.close()
    again, _, handed_again = get(first)
    first.close()
    assert again == thread
    assert handed_again == handed  # the first client's connection was not handed back


def test_a_client_that_never_pauses_does_not_keep_the_only_thread(serve):
    port = serve(threads=1)
    busy = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    last = [get(busy, "/slow")[1]]
    stop = threading.Event()

    def keep_asking():  # back to back, 50 ms each, bounded: 200 requests at most
        for _ in range(200):
            if stop.is_set():
                return
            last.append(get(busy, "/slow")[1])

    asker = threading.Thread(target=keep_asking, daemon=True)
    asker.start()
    wait_for(lambda: len(last) > 3, what="the busy client's requests")
    # Queued while the only thread serves the busy client (its requests take 50 ms, its pauses
    # a fraction of a millisecond): served next, not after all of the busy client's requests.
    other = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    _, number, _ = get(other)
    other.close()
    seen = len(last)  # the busy client goes on (unless it was done: then it was served first)
    wait_for(lambda: len(last) >= min(seen + 2, 201), what="the busy client's next requests")
    stop.set()
    asker.join(30)
    assert asker.is_alive() is False
    assert number < last[-1]
    assert len(last) < 201


def test_a_new_connection_does_not_wait_for_a_lingering_thread(serve):
    port = serve(threads=1)
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    get(idle)
    time.sleep(0.2)  # the only thread now lingers on it (for 5 s)
    # Answered at once, not after the linger: well within 2 s even on a busy machine.
    other = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    get(other)
    other.close()
    idle.close()
