"""Notifications: when a job ends, POST its JSON to a URL, in the background.

`TRIGGER_NOTIFY_URL` (and a job's own `notify` URL) receive the job's JSON plus a Slack-compatible
`text`. `TRIGGER_NOTIFY_ON` chooses when: `failure` (failed or lost; the default), `always`, or
`change` (the job's state differs from the previous ended job of the same target). Deliveries go
through a queue and one sender thread with retries and backoff, so the dispatcher never waits.
Pending deliveries are lost if the controller is killed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import requests

from .store import Job, JobState, Store

log = logging.getLogger(__name__)

POLICIES = ("failure", "always", "change")
RETRY_DELAYS = (1.0, 4.0, 15.0)  # after the first try: four attempts in about 20 s


def describe(job: Job) -> str:
    """The one-line `text` of a notification."""
    text = f"maketrigger: job {job.id} ({job.target}) {job.state.value}"
    if job.error:
        text += f": {job.error}"
    if job.worker:
        text += f" on {job.worker}"
    return text


class Notifier:
    def __init__(self, store: Store, url: str = "", policy: str = "failure",
                 delays: tuple[float, ...] = RETRY_DELAYS, timeout: float = 10.0):
        if policy not in POLICIES:
            raise ValueError(f"TRIGGER_NOTIFY_ON must be one of {', '.join(POLICIES)}")
        self.store, self.url, self.policy = store, url, policy
        self.delays, self.timeout = delays, timeout
        self._queue: queue.Queue = queue.Queue(maxsize=10000)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.session = requests.Session()

    def wanted(self, job: Job) -> bool:
        if self.policy == "always":
            return True
        if self.policy == "failure":
            return job.state in (JobState.FAILED, JobState.LOST)
        previous = self.store.previous_state(job.target, job.id)
        return previous is not None and previous is not job.state

    def job_ended(self, job: Job) -> None:
        """Called with a job that has just ended; queues its notifications (never blocks)."""
        targets = [u for u in {self.url, job.notify} if u]
        if not targets or not self.wanted(job):
            return
        payload = {**job.to_dict(), "text": describe(job)}
        self._ensure_thread()
        for url in targets:
            try:
                self._queue.put_nowait((url, payload))
            except queue.Full:
                log.error("notification queue full: dropped job %s for %s", job.id, url)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="notify", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            url, payload = self._queue.get()
            self.deliver(url, payload)

    def deliver(self, url: str, payload: dict) -> bool:
        """POST one notification, retrying with backoff; True once it was accepted (2xx)."""
        for attempt, delay in enumerate((0.0, *self.delays), 1):
            time.sleep(delay)
            try:
                resp = self.session.post(url, json=payload, timeout=self.timeout)
                if 200 <= resp.status_code < 300:
                    return True
                problem = f"answered {resp.status_code}"
                if 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
                    log.error("notification of job %s to %s refused (%s)", payload["id"], url,
                              problem)
                    return False
            except requests.RequestException as exc:
                problem = str(exc)
            log.warning("notification of job %s to %s failed (attempt %s): %s", payload["id"],
                        url, attempt, problem)
        log.error("notification of job %s to %s given up", payload["id"], url)
        return False
