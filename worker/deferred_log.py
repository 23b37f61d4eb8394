"""Log lines below WARNING written a moment later, together, instead of each as it comes.

The controller logs one line at info for every job that ends, as its request is being answered.
Under Docker each line written to stderr wakes the container's shim and the engine's log driver,
which then compete with the job's round trip for the machine's CPUs (figures: README.md,
Performance, and bench/results/ab-20261207-0720/). Held for up to DELAY and written with one
write, the lines of a busy second wake them a few times instead of once a job.

A warning or an error is written at once, after the lines held before it (their order stays).
What is held when the process exits normally is written (logging.shutdown), and from then on
every line is written as it comes; a process killed outright loses at most DELAY of lines below
WARNING. Only what goes through the handler is held: gunicorn's own log (`gunicorn.error`) and
tracebacks of crashed threads go out as they come, so they may appear before an info line that
was logged earlier. A held record's message is formatted when it is written: its arguments must
not change meanwhile (every call in this project passes strings, numbers and exceptions).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback

DELAY = 0.1  # seconds a line below WARNING may wait
CAPACITY = 1000  # records held at most: more are written at once


class DeferredHandler(logging.Handler):
    """Hands the records on to `target` (a StreamHandler), one write for all that were held, at
    most `delay` after the first of them, from a thread of its own (one per process: started by
    the first record held after a fork)."""

    def __init__(self, target: logging.StreamHandler, delay: float = DELAY):
        super().__init__()
        self.target, self.delay = target, delay
        self.buffer: list[logging.LogRecord] = []
        self._due = threading.Event()
        self._writing = threading.Lock()  # taken under self.lock: batches go out in order
        self._flusher_pid: int | None = None
        self._closed = False
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        """The parent writes what it held; the child's copy of it is not the child's, nor is
        the parent's flusher thread (logging itself renews the handlers' own locks)."""
        self.buffer = []
        self._due = threading.Event()
        self._writing = threading.Lock()
        self._flusher_pid = None

    def emit(self, record: logging.LogRecord) -> None:  # (under self.lock: Handler.handle)
        self.buffer.append(record)
        if (self._closed or record.levelno >= logging.WARNING
                or len(self.buffer) >= CAPACITY):
            self.flush()
            return
        if self._flusher_pid != os.getpid():
            try:
                threading.Thread(target=self._flush_later, name="log-flush",
                                 daemon=True).start()
            except Exception:  # no thread now (the interpreter exiting, a pids limit): at once
                self.flush()
                return
            self._flusher_pid = os.getpid()
        self._due.set()

    def flush(self) -> None:
        with self.lock:
            records, self.buffer = self.buffer, []
            if not records:
                return
            self._writing.acquire()  # before letting go of self.lock: no batch overtakes it
        try:
            self._write(records)
        finally:
            self._writing.release()

    def _write(self, records: list[logging.LogRecord]) -> None:
        target = self.target
        lines = []
        for record in records:
            try:
                lines.append(target.format(record) + target.terminator)
            except Exception:
                target.handleError(record)
        if not lines:
            return
        with target.lock:
            try:
                target.stream.write("".join(lines))
                target.stream.flush()
            except Exception:
                target.handleError(records[-1])

    def close(self) -> None:
        """Write what is held; records that come later are written at once."""
        with self.lock:
            self._closed = True
        self.flush()
        super().close()

    def _flush_later(self) -> None:
        due = self._due
        while True:
            due.wait()
            time.sleep(self.delay)
            due.clear()  # before the flush: a record held after it sets it again
            try:
                self.flush()
            except Exception:  # (_write reports its own) said as logging's handleError does it,
                traceback.print_exc()  # and the thread goes on
