"""Keeping the job history bounded: with TRIGGER_KEEP_JOBS set, a thread forgets the oldest
ended jobs beyond that many, with their logs, once a minute and at start, a batch at a time so
that triggers and builds never wait long for the database. Jobs with a notification still to
send stay, and so does a job whose target's next job has not ended (Store.prune_jobs)."""

from __future__ import annotations

import logging
import threading

from .store import Store, StoreError

log = logging.getLogger(__name__)

INTERVAL = 60.0  # seconds between looks at the history's length
PAUSE = 0.05  # seconds between batches: other writers go first


class Pruner:
    def __init__(self, store: Store, keep: int, interval: float = INTERVAL):
        self.store, self.keep, self.interval = store, keep, interval
        self.forgotten = 0  # jobs forgotten so far (for tests and logs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.keep and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="history", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def prune(self) -> int:
        """Forget what is beyond `keep` now; how many jobs were forgotten."""
        total, after = 0, 0
        while not self._stop.is_set():
            done, after = self.store.prune_jobs(self.keep, after=after)
            total += done
            if not after:
                break
            self._stop.wait(PAUSE)
        self.forgotten += total
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                done = self.prune()
                if done:
                    log.info("history: forgot the %s oldest ended jobs (TRIGGER_KEEP_JOBS=%s)",
                             done, self.keep)
            except StoreError as exc:  # tried again at the next look
                log.warning("history: could not forget old jobs: %s", exc)
            self._stop.wait(self.interval)
