"""Daemon threads kept for the next call once they are done: the worker runs one per build
(waiting for its make) and the controller one per job it starts and follows.

A new thread costs ~0.1 ms more than waking an idle one here, twice on every job's way to make.
concurrent.futures' pool would do, but its threads are joined at interpreter exit, which would
hold a stopping server until every build has ended; these are daemon threads, as before.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class DaemonThreads:
    """Runs each call on an idle thread, or on a new one when none is idle (no upper bound:
    every call is a build or a job that must not wait for another to end)."""

    def __init__(self, name: str):
        self.name = name
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._made = 0

    def submit(self, fn: Callable, *args) -> None:
        with self._lock:
            new = self._idle == 0
            if new:
                self._made += 1
            else:
                self._idle -= 1  # that idle thread (or another) takes this call
        self._calls.put((fn, args))
        if new:
            threading.Thread(target=self._serve, name=f"{self.name}-{self._made}",
                             daemon=True).start()

    def _serve(self) -> None:
        while True:
            fn, args = self._calls.get()
            try:
                fn(*args)
            except Exception:
                log.exception("%s: unexpected error", self.name)
            with self._lock:
                self._idle += 1
