"""Storing a followed run's log in a thread of its own, behind the follower that reads it.

A follower that stores each piece before reading the next one leaves the worker's stream idle
while SQLite commits, and the other way round. For a large log the follower hands the pieces to
a LogWriter instead and reads on; a small log is stored inline (a thread per job would cost more
than it saves). Pieces that arrived while the last one was being stored go in one transaction:
per 200 MB, hundreds of commits fewer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from .store import Store

WRITE_BEHIND_AFTER = 4 * 1024 * 1024  # bytes a log stores inline before it gets a LogWriter
BATCH_BYTES = 4 * 1024 * 1024  # pieces waiting together are stored as one, up to this size
DEPTH = 4  # pieces (of up to worker_http.MERGE_LIMIT bytes) read ahead of the one being stored


class LogWriter:
    """Stores the pieces of one job's log in the order given, each starting where the one
    before it ended. The first error (a StoreError, a gap) stops the storing; put() and close()
    raise it in the follower."""

    def __init__(self, store: Store, job_id: int, stored: Callable[[], None]):
        self.store, self.job_id, self.stored = store, job_id, stored
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
            batch = [data]
            size = len(data)
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
            if self._error is not None:
                continue  # nothing after a failed piece: the follower reads it again
            try:
                self.store.append_log(self.job_id, offset,
                                      batch[0] if len(batch) == 1 else b"".join(batch))
                self.stored()
            except Exception as exc:  # raised in the follower, which handles it
                self._error = exc
