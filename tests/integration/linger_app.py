"""A WSGI app for test_gthread_linger.py: each answer names the thread that served it and the
request's number in the process, under LingeringThreadWorker with a linger long enough that a
busy test machine cannot make the client's next request late for it."""

import itertools
import threading

from worker.gthread_linger import LingeringThreadWorker

_numbers = itertools.count(1)


class LongLinger(LingeringThreadWorker):
    linger = 2.0


def app(environ, start_response):
    body = f"{threading.get_ident()} {next(_numbers)}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
