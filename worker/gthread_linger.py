"""gunicorn's gthread worker class with one change, for both servers: the thread that answered a
kept-alive connection waits up to LINGER seconds for the client's next request and serves it
itself.

In gthread every request on a kept-alive connection is handed between threads twice, with a
trip through a poller between: the answering thread passes the connection to the main thread
(through a pipe), which puts it in its poller, and then passes its next request to a pool
thread. Each hand-over wakes a thread and takes the interpreter lock from whichever thread runs
the job. A client that sends its next request at once (a burst, a loop, the controller starting
its next job on the same connection to the worker) now skips them. Measured against plain
gthread on a 2-CPU VM on 2026-12-06, both servers on the host, interleaved: round trip p50 of
sequential `POST /jobs {"wait": true}` 4.50 -> 4.21 ms (8 rounds of 800); 12 bursts of `hey -n
2000 -c 8` identical triggers: 1,011 -> 1,272 accepted a second, controller CPU 0.97 -> 0.77 ms
a trigger.

A thread lingers only while no other connection waits for a thread: one that is queued while
no thread is free ends every linger at once (a connection that a free thread takes ends none),
so a client that never pauses cannot keep the pool from the others, and a new connection does
not wait for a linger to end. A connection whose client is slower than LINGER goes back to the
poller, as in gthread. Under a gunicorn whose gthread `handle` answers otherwise than True for a
kept-alive connection (older ones answered a tuple), nothing lingers: it is gthread.
"""

from __future__ import annotations

import os
import select
import threading

from gunicorn.workers.gthread import ThreadWorker


class LingeringThreadWorker(ThreadWorker):
    # Long enough for a client that sends its next request as soon as it has read an answer
    # (0.05-0.5 ms here), for the controller's next start on the same connection (~2 ms after
    # a no-op job's end) and for a busy machine's scheduling; short, since the thread waits.
    # 2 ms and 50 ms measured alike.
    linger = 0.005

    def init_process(self):
        """(In the serving process, after the fork.)"""
        self._lock = threading.Lock()
        self._queued = 0  # connections handed to the pool that no thread has taken yet
        self._lingering = 0  # threads waiting for their client's next request
        self._busy = 0  # threads in handle() (lingering ones included)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        super().init_process()

    def enqueue_req(self, conn):
        with self._lock:  # (written under the lock: the last lingering thread empties the pipe)
            self._queued += 1
            if self._lingering and self._starved():  # the lingering threads give way to it
                self._wake()
        super().enqueue_req(conn)

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        self._wake()  # a stopping worker lingers no more

    def handle_quit(self, sig, frame):
        self._wake()
        super().handle_quit(sig, frame)

    def _wake(self) -> None:
        """Wake the lingering threads; safe in a signal handler (a byte written after the last
        one left the pipe only makes the next one give up its linger at once)."""
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, AttributeError):  # full: readable anyway; not forked yet
            pass

    def _starved(self) -> bool:
        """Whether more connections are queued than there are free threads to take them (under
        the lock; only a queued connection makes it true, so `enqueue_req` wakes whom it must)."""
        return self._queued > self.cfg.threads - self._busy

    def handle(self, conn):
        with self._lock:
            self._queued -= 1
            self._busy += 1
        try:
            keepalive = super().handle(conn)
            while keepalive is True and self.alive and self._next_request_here(conn):
                keepalive = super().handle(conn)
            return keepalive
        finally:
            with self._lock:
                self._busy -= 1

    def _next_request_here(self, conn) -> bool:
        """Whether the next request on `conn` arrived (or was read ahead already) within
        `linger`, while no other connection waited for a thread."""
        try:
            if conn.parser.unreader.buf.getvalue():
                return not self._starved()  # read ahead with the last body: no need to wait
            sock = conn.sock.fileno()
        except (AttributeError, OSError, ValueError):  # another gunicorn's parser; closed
            return False
        with self._lock:
            if self._starved():
                return False
            self._lingering += 1
        try:
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            poller.register(self._wake_r, select.POLLIN)
            ready = [fd for fd, _ in poller.poll(self.linger * 1000)]
        except (OSError, ValueError):
            ready = []
        finally:
            with self._lock:
                self._lingering -= 1
                if self._lingering == 0:  # the last to wake empties the pipe
                    try:
                        while os.read(self._wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
        return ready == [sock] and not self._starved()
