"""Notifications: when a job ends, POST its JSON to a URL, in the background.

`TRIGGER_NOTIFY_URL` (and a job's own `notify` URL) receive the job's JSON plus a Slack-compatible
`text`. `TRIGGER_NOTIFY_ON` chooses when: `failure` (failed or lost; the default), `always`, or
`change` (the job's state differs from the previous ended job of the same target).

The notifications of a job are queued in the database, in the transaction that ends the job
(`Store.notify_targets`), and one sender thread delivers them, retrying with backoff; so the
dispatcher never waits, and a controller that is killed or restarted sends, once back, what was
still to send. A notification is deleted once a receiver accepted it: at least once, not
exactly once (a crash between the POST and the delete sends it again).
"""

from __future__ import annotations

import logging
import threading
import time

import requests

from .store import Job, JobState, Store, StoreError

log = logging.getLogger(__name__)

POLICIES = ("failure", "always", "change")
RETRY_DELAYS = (1.0, 4.0, 15.0)  # after the first try: four attempts in about 20 s
IDLE_WAIT = 60.0  # the longest the sender sleeps without being woken (a backstop)
STORE_RETRY = 5.0  # after the database failed the sender


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
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.session = requests.Session()
        store.notify_targets = self.targets

    def wanted(self, job: Job) -> bool:
        if self.policy == "always":
            return True
        if self.policy == "failure":
            return job.state in (JobState.FAILED, JobState.LOST)
        previous = self.store.previous_state(job.target, job.id)
        return previous is not None and previous is not job.state

    def targets(self, job: Job) -> list[str]:
        """Where to send the end of this job (called by the store as the job ends)."""
        urls = [u for u in dict.fromkeys((self.url, job.notify)) if u]
        return urls if urls and self.wanted(job) else []

    def job_ended(self, job: Job) -> None:
        """Told of a job that has just ended (its notifications are queued): send them now."""
        if self.url or job.notify:
            self.start()
            self._wake.set()

    # --- the sender thread ---------------------------------------------------------------
    def start_if_pending(self) -> None:
        """At startup (the gunicorn hook): send what a previous run of the controller left."""
        if self.url or self.store.next_notification_due() is not None:
            self.start()

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(target=self._loop, name="notify", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            self._wake.set()
            thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                pause = self.send_due()
            except StoreError as exc:
                log.error("notifications: %s (trying again in %g s)", exc, STORE_RETRY)
                pause = STORE_RETRY
            except Exception:
                log.exception("notifications: unexpected error (trying again in %g s)",
                              STORE_RETRY)
                pause = STORE_RETRY
            self._wake.wait(pause)
            self._wake.clear()

    def send_due(self, now: float | None = None) -> float:
        """Send every notification that is due; the seconds until the next one is."""
        while not self._stop.is_set():
            due = self.store.due_notifications(time.time() if now is None else now)
            if not due:
                break
            for notification in due:
                if self._stop.is_set():
                    break
                self._send(*notification)
        following = self.store.next_notification_due()
        return IDLE_WAIT if following is None else min(max(following - time.time(), 0.0),
                                                        IDLE_WAIT)

    def _send(self, notification_id: int, job_id: int, url: str, attempts: int) -> None:
        job = self.store.get_job(job_id)
        if job is None:  # gone from the history meanwhile
            self.store.notification_done(notification_id)
            return
        attempts += 1
        outcome, problem = self.post(url, {**job.to_dict(), "text": describe(job)})
        if outcome == "failed" and attempts <= len(self.delays):
            log.warning("notification of job %s to %s failed (attempt %s): %s", job_id, url,
                        attempts, problem)
            self.store.notification_later(notification_id, attempts,
                                          time.time() + self.delays[attempts - 1])
            return
        if outcome == "refused":
            log.error("notification of job %s to %s refused (%s)", job_id, url, problem)
        elif outcome == "failed":
            log.error("notification of job %s to %s given up after %s attempts: %s", job_id,
                      url, attempts, problem)
        self.store.notification_done(notification_id)

    def post(self, url: str, payload: dict) -> tuple[str, str]:
        """One POST: ("sent", ""), ("refused", why) for an answer that retrying cannot
        change (a 4xx other than 408 and 429), or ("failed", why)."""
        try:
            resp = self.session.post(url, json=payload, timeout=self.timeout)
        except requests.RequestException as exc:
            return "failed", str(exc)
        if 200 <= resp.status_code < 300:
            return "sent", ""
        problem = f"answered {resp.status_code}"
        if 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
            return "refused", problem
        return "failed", problem
