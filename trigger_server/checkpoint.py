"""Copying the database's write-ahead log back into it (a WAL checkpoint) in a thread of its own.

SQLite does this in whichever connection commits past `wal_autocheckpoint` pages, and syncs the
WAL to disk first. With a build that prints a lot, that was the follower storing its log, which
then copied and synced tens of megabytes before reading on; with many small jobs, it was one
request in about 700 that waited ~190 ms for 40 MB of WAL to reach the disk. Here a thread
checkpoints once every CHECKPOINT_BYTES of stored log, and once a second when anything else was
committed, while the writers go on: when a writer's autocheckpoint comes, the frames are in the
database already and it has nothing to copy or sync. It stays as the backstop (for a database
this thread is not started on, or if it falls behind).
"""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger(__name__)

CHECKPOINT_BYTES = 8 * 1024 * 1024  # about 2,000 pages of 4 KiB
CHECKPOINT_INTERVAL = 1.0  # seconds between looks at whether anything was committed


class Checkpointer:
    def __init__(self, path: str, every: int = CHECKPOINT_BYTES, busy_timeout: float = 10.0,
                 interval: float = CHECKPOINT_INTERVAL):
        self.path, self.every, self.busy_timeout = path, every, busy_timeout
        self.interval = interval
        self.done = 0  # checkpoints made (for tests and debugging)
        self._written = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="checkpoint", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wrote(self, size: int) -> None:
        """`size` bytes were committed (called by the store after each stored log piece)."""
        with self._lock:
            self._written += size
            if self._written < self.every:
                return
            self._written = 0
        self._wake.set()

    def _loop(self) -> None:
        db = None
        seen = None  # the database's data_version at the last checkpoint
        while not self._stop.is_set():
            woken = self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                if db is None:
                    db = sqlite3.connect(self.path, timeout=self.busy_timeout,
                                         isolation_level=None)
                # Changes whenever another connection committed: a cheap look, once a second.
                version = db.execute("PRAGMA data_version").fetchall()[0][0]
                if not woken and version == seen:
                    continue
                # PASSIVE: copies what no reader still needs and never blocks the writers.
                db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                seen = version
                self.done += 1
            except sqlite3.Error as exc:  # the writers' autocheckpoint is still there
                log.warning("background checkpoint failed: %s", exc)
        if db is not None:
            db.close()
