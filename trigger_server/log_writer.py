"""Storing a followed run's log in a thread of its own, behind the follower that reads it.

A follower that stores each piece before reading the next one leaves the worker's stream idle
while SQLite commits, and the other way round. For a large log the follower hands the pieces to
a LogWriter instead and reads on; a small log is stored inline (a thread per job would cost more
than it saves). Pieces that arrived while the last ones were being stored go in one
transaction (each its own row): per 200 MB, hundreds of commits fewer.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from .store import Store, StoreError

log = logging.getLogger(__name__)

WRITE_BEHIND_AFTER = 4 * 1024 * 1024  # bytes a log stores inline before it gets a LogWriter
BATCH_BYTES = 4 * 1024 * 1024  # pieces waiting together are stored as one, up to this size
RETRY = 2.0  # seconds between tries to store a piece while the database fails
DEPTH = 4  # pieces (of up to worker_http.MERGE_LIMIT bytes) read ahead of the one being stored


class LogWriter:
    """Stores the pieces of one job's log in the order given, each starting where the one
    before it ended. A database error is retried every RETRY seconds (meanwhile the follower
    waits in put(), as it used to wait for its own writes): the worker may already have dropped
    what was read (a docker:// run keeps only what was not read yet). Any other error (a gap),
    or a StoreError once `stop` is set, stops the storing; put() and close() raise it."""

    def __init__(self, store: Store, job_id: int, stored: Callable[[], None],
                 stop: threading.Event):
        self.store, self.job_id, self.stored, self.stop = store, job_id, stored, stop
        self._pieces: queue.Queue[tuple[int, bytes] | None] = queue.Queue(DEPTH)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name=f"log-{job_id}", daemon=True)
        self._thread.start()

    def put(self, offset: int, data: bytes) -> None:
        """Store `data` at `offset` of the log once the pieces before it are stored."""
        if self._error is not None:
            raise self._error
        self._pieces.put((offset, data))

    def close(self) -> None:
        """Returns once every piece given is stored, or raises the error that stopped it."""
        self._pieces.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _loop(self) -> None:
        closing = False
        while not closing:
            piece = self._pieces.get()
            if piece is None:
                break
            offset, data = piece
            batch, size = [data], len(data)
            while size < BATCH_BYTES:  # what is already waiting goes in the same transaction
                try:
                    more = self._pieces.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    closing = True
                    break
                batch.append(more[1])
                size += len(more[1])
            if self._error is None:  # after a failed piece nothing is stored: no gap
                self._store(offset, batch)

    def _store(self, offset: int, batch: list[bytes]) -> None:
        while True:
            try:
                self.store.append_logs(self.job_id, offset, batch)
                self.stored()
                return
            except StoreError as exc:
                if self.stop.is_set():
                    self._error = exc
                    return
                log.error("job %s: %s; storing its log again in %g s", self.job_id, exc, RETRY)
                if self.stop.wait(RETRY):
                    self._error = exc
                    return
            except Exception as exc:  # raised in the follower, which handles it
                self._error = exc
                return
