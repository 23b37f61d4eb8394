"""A WSGI app for test_gthread_linger.py under LingeringThreadWorker with a linger long enough
that a busy test machine cannot make a client's next request late for it. Each answer says
which thread served it, the request's number in the process, and how many times a connection
had been handed to the thread pool by then (once per request in plain gthread). `/slow`
takes 50 ms."""

import itertools
import threading
import time

from worker.gthread_linger import LingeringThreadWorker

_numbers = itertools.count(1)
_handed = [0]


class LongLinger(LingeringThreadWorker):
    linger = 5.0

    def enqueue_req(self, conn):
        _handed[0] += 1  # (in the main thread only)
        super().enqueue_req(conn)


def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        time.sleep(0.05)
    body = f"{threading.get_ident()} {next(_numbers)} {_handed[0]}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
