"""The servers' gunicorn worker class (worker/gthread_linger.py) under a real gunicorn: a
kept-alive client's next request is served by the thread that answered the last one, and a
client that never pauses does not keep the pool from another."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from .procs import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def serve(tmp_path):
    """serve(threads) -> port of tests/integration/linger_app.py under gunicorn."""
    procs = []

    def start(threads: int, worker_class: str = "tests.integration.linger_app.LongLinger"):
        port = free_port()
        log = open(tmp_path / f"gunicorn-{port}.log", "wb")  # noqa: SIM115 (closed below)
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-k", worker_class, "--threads", str(threads),
             "--no-control-socket", "-b", f"127.0.0.1:{port}", "tests.integration.linger_app:app"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        procs.append((proc, log))

        def answers():
            try:
                get(http.client.HTTPConnection("127.0.0.1", port, timeout=5))
                return True
            except OSError:
                assert proc.poll() is None, (tmp_path / f"gunicorn-{port}.log").read_text()
                return False

        wait_for(answers, timeout=20, what="gunicorn to answer")
        return port

    yield start
    for proc, log in procs:
        os.killpg(proc.pid, 15)
        proc.wait(20)
        log.close()


def get(conn: http.client.HTTPConnection) -> tuple[int, int]:
    """(serving thread, request number)"""
    conn.request("GET", "/")
    resp = conn.getresponse()
    assert resp.status == 200
    thread, number = resp.read().split()
    return int(thread), int(number)


def test_a_kept_alive_clients_requests_are_served_by_one_thread(serve):
    port = serve(threads=4)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    threads = {get(conn)[0] for _ in range(60)}
    conn.close()
    assert len(threads) == 1


def test_a_client_that_never_pauses_does_not_keep_the_only_thread(serve):
    port = serve(threads=1)
    busy = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    first = get(busy)[1]
    last = [first]
    stop = threading.Event()

    def keep_asking():  # back to back, bounded: 3,000 requests at most
        for _ in range(3000):
            if stop.is_set():
                return
            last.append(get(busy)[1])

    asker = threading.Thread(target=keep_asking, daemon=True)
    asker.start()
    wait_for(lambda: len(last) > 20, what="the busy client's requests")
    other = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    _, number = get(other)  # waits at most for the busy client's current request (and linger)
    stop.set()
    asker.join(30)
    assert asker.is_alive() is False
    # Served amid the busy client's requests, not after all of them.
    assert number < last[-1]
    assert len(last) < 3001
