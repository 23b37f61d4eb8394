"""Notifications: when a job ends, POST its JSON to a URL, in the background.

`TRIGGER_NOTIFY_URL` (and a job's own `notify` URL) receive the job's JSON plus a Slack-compatible
`text`. `TRIGGER_NOTIFY_ON` chooses when: `failure` (failed or lost; the default), `always`, or
`change` (the job's state differs from the previous ended job of the same target; a target's
first job notifies unless it succeeded).

The notifications of a job are queued in the database, in the transaction that ends the job
(`Store.notify_targets`), and a sender thread delivers them, retrying with backoff; so the
dispatcher never waits, and a controller that is killed or restarted sends, once back, what was
still to send. A notification is deleted once a receiver accepted it: at least once, not
exactly once (a crash between the POST and the delete sends it again).

Each receiver gets its notifications one at a time, in the order they fall due, from a lane
(a thread that sends them until none of its receiver's is due). A receiver is a scheme, host and
port, except TRIGGER_NOTIFY_URL, which is a receiver of its own whatever other URLs share its
host. The receivers of jobs' own `notify` URLs, which anyone who may trigger can set, share
MAX_LANES lanes; TRIGGER_NOTIFY_URL always has one more. So a job's receiver that is slow or
down delays its own notifications, never the operator's; MAX_LANES of them busy at once delay
the other receivers of jobs.

A POST past its deadline has its connection shut down (`cuttable`), so its thread ends; one
still connecting then is shut down once connected. Until then, or for good through a SOCKS
proxy (which cannot be cut), it is left behind, one a receiver: the next POSTs
to its receiver fail at once while it lasts, and MAX_STUCK of them (the operator's not counted)
make the POSTs to the other receivers of jobs fail at once (each an attempt, so given up after
the last) until one ends.
"""

from __future__ import annotations

import logging
import threading
import time
from urllib.parse import urlsplit

import requests

from . import cuttable
from .store import Job, JobState, Store, StoreError

log = logging.getLogger(__name__)

POLICIES = ("failure", "always", "change")
RETRY_DELAYS = (1.0, 4.0, 15.0)  # after the first try: four attempts, 20 s of delays apart
IDLE_WAIT = 60.0  # the longest the sender sleeps without being woken (a backstop)
STORE_RETRY = 5.0  # after the database failed the sender
# POSTs to jobs' receivers past their deadline that may still hold a thread each, one a
# receiver: MAX_STUCK, and up to MAX_LANES - 1 more that were under way together.
MAX_STUCK = 8
MAX_LANES = 8  # receivers of jobs' own URLs sent to at once, one POST at a time each
CUT_WAIT = 2.0  # seconds a POST past its deadline is given to end once its connection is cut
LANE_PAGE = 50  # due notifications a lane reads at a time
OPERATOR = "TRIGGER_NOTIFY_URL"  # the receiver TRIGGER_NOTIFY_URL is, whatever its host


def where(url: str) -> str:
    """A receiver's URL as logs show it: scheme, host and port. Its path and query may be its
    secret (a Slack or Teams webhook URL is one), and so may a user:password."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an unusable URL)"
    host = parts.netloc.rpartition("@")[2]  # without user:password
    return f"{parts.scheme}://{host}" + ("/…" if parts.path not in ("", "/") or parts.query
                                         else "")


def receiver(url: str) -> str:
    """Whom a URL reaches: its scheme, host and port. Its notifications go one at a time."""
    try:
        parts = urlsplit(url)
        port = parts.port
        if port is None:
            port = {"http": 80, "https": 443}.get(parts.scheme.lower(), "")
    except ValueError:
        return url  # refused when it is tried
    return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{port}"


def _redacted(text: str, url: str) -> str:
    """An error's text without the URL's secret parts (requests' messages repeat the path)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return text
    for secret in (url, parts.path + ("?" + parts.query if parts.query else ""), parts.path,
                   parts.password or ""):
        if len(secret) > 1:
            text = text.replace(secret, "…")
    return text


def _log_failure(exc: Exception) -> None:
    """The sender's words on an error that pauses it for STORE_RETRY."""
    if isinstance(exc, StoreError):
        log.error("notifications: %s (trying again in %g s)", exc, STORE_RETRY)
    else:
        log.exception("notifications: unexpected error (trying again in %g s)", STORE_RETRY,
                      exc_info=exc)


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
        # A receiver that trickles its answer keeps each read within `timeout`: every POST
        # also has a deadline of its own, at which its connection is shut down (`post`).
        self.deadline = 3 * timeout
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._looking = threading.Lock()  # one look at a time starts lanes (_start_lanes)
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None  # the running sender's own
        self._stuck = 0  # POSTs to jobs' receivers past their deadline, threads not ended
        self._stuck_at: set[str] = set()  # the receivers with such a POST (the operator too)
        self._lanes: dict[str, threading.Thread] = {}  # receiver -> the lane sending to it
        self._failed_until = 0.0  # (monotonic) a lane failed: no new lanes until then
        # Notifications queued before this notifier told the store their receivers are
        # filled in at the first look (after that, the store asks receiver_of as it queues).
        self._receivers_filled = False
        # Sent (or given up), but the database failed to record it: not sent again meanwhile.
        self._unsettled: dict[int, tuple[int, float] | None] = {}
        # One _settle at a time (a lane's and the sender's look): two could both act on an
        # entry, and the second delete would remove the notification queued meanwhile with the
        # id the first freed (SQLite reuses the largest rowid once it is deleted).
        self._settling = threading.Lock()
        store.notify_targets = self.targets
        store.notify_receiver = self.receiver_of

    def receiver_of(self, url: str) -> str:
        """The receiver a notification to `url` is queued for (one lane each)."""
        return OPERATOR if self.url and url == self.url else receiver(url)

    def wanted(self, job: Job) -> bool:
        if self.policy == "always":
            return True
        if self.policy == "failure":
            return job.state in (JobState.FAILED, JobState.LOST)
        previous = self.store.previous_state(job.target, job.id)
        if previous is None:  # the target's first end: a failure is news, a success is not
            return job.state is not JobState.SUCCEEDED
        return previous is not job.state

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
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._loop, args=(self._stop,),
                                                name="notify", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sending; wait (up to `timeout` in all) for the POSTs under way to be answered
        and recorded, so that a stopping controller does not send them again next time."""
        deadline = time.monotonic() + timeout
        with self._lock:
            thread, self._thread = self._thread, None
            if self._stop is not None:
                self._stop.set()
        if thread is not None:
            self._wake.set()
            thread.join(timeout)
        with self._lock:
            lanes = list(self._lanes.values())
        for lane in lanes:
            lane.join(max(0.0, deadline - time.monotonic()))

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._wake.clear()  # before looking: a lane that ends meanwhile wakes the next look
            try:
                pause = self.send_due(stop=stop, wait=False)
            except Exception as exc:
                _log_failure(exc)
                pause = STORE_RETRY
            self._wake.wait(pause)

    def send_due(self, now: float | None = None, stop: threading.Event | None = None,
                 wait: bool = True) -> float:
        """Start a lane for each receiver with notifications due that has none (see
        `_start_lanes`); with `wait`, wait for every lane and look again until a look starts
        none (a database error in a lane is raised here). Returns the seconds until the next
        look: until a notification falls due, or STORE_RETRY after a database error. A
        receiver left without a lane is looked at again when a lane ends (it wakes the sender
        thread)."""
        stop = stop or threading.Event()
        with self._lock:
            paused = self._failed_until - time.monotonic()
        if paused > 0 and not wait:
            return paused
        self._settle()
        if not self._receivers_filled:
            if self.store.fill_receivers(self.receiver_of):
                log.info("notifications: the receivers of those queued before are recorded now")
            self._receivers_filled = True
        when = time.time() if now is None else now
        while not stop.is_set():
            lanes, busy = self._start_lanes(when, now, stop)
            if not wait:
                break
            with self._lock:  # the lanes just started, and any the sender thread runs
                running = set(self._lanes.values())
            # and those that kept the look from starting one, even if they have ended since:
            # their receivers' lanes may now be started
            running |= set(busy)
            if not running:
                break
            for lane in running:
                lane.join()
            for _, failed in lanes:
                if failed:
                    raise failed[0]
            when = time.time() if now is None else now
        with self._lock:
            if self._unsettled:
                return STORE_RETRY
        following = self.store.next_notification_due(after=when)
        return IDLE_WAIT if following is None else min(max(following - time.time(), 0.0),
                                                        IDLE_WAIT)

    def _start_lanes(self, when: float, now: float | None, stop: threading.Event
                     ) -> tuple[list[tuple[threading.Thread, list]], list[threading.Thread]]:
        """A lane for each receiver with notifications due by `when` that has none: up to
        MAX_LANES for jobs' receivers, the one whose oldest is oldest first, and one for
        OPERATOR. Returns the lanes started, each with the list its error goes to, and the
        lanes that were running as it looked (busy receivers, and no room for more). One look
        at a time (the sender thread's, and a caller's of send_due): two would both see a
        receiver without a lane, and start two."""
        with self._looking:
            with self._lock:
                busy = set(self._lanes)
                running = list(self._lanes.values())
            room = MAX_LANES - len(busy - {OPERATOR})
            keys = self.store.due_receivers(when, skip=busy | {OPERATOR}, limit=max(room, 0))
            if OPERATOR not in busy and self.store.due_notifications(when, 1,
                                                                     receiver=OPERATOR):
                keys.append(OPERATOR)
            started = []
            for key in keys:
                failed: list[BaseException] = []
                lane = threading.Thread(target=self._lane, args=(key, now, stop, failed),
                                        name="notify-lane", daemon=True)
                with self._lock:
                    self._lanes[key] = lane
                try:
                    lane.start()
                except BaseException:  # (no thread to be had): the receiver is not lane-less
                    with self._lock:
                        del self._lanes[key]
                    raise
                started.append((lane, failed))
            return started, running

    def _lane(self, key: str, now: float | None, stop: threading.Event,
              failed: list[BaseException]) -> None:
        """Send the receiver's due notifications, oldest first, a page at a time, until none
        is due (a retry falls due after its delay, and is sent then, in its turn)."""
        try:
            while not stop.is_set():
                with self._lock:
                    unsettled = set(self._unsettled)
                page = [row for row in self.store.due_notifications(
                    time.time() if now is None else now, LANE_PAGE, receiver=key)
                    if row[0] not in unsettled]
                if not page:
                    break
                for notification in page:
                    if stop.is_set():
                        break
                    self._send(*notification)
        except Exception as exc:  # the sender thread tries again after STORE_RETRY
            failed.append(exc)
            with self._lock:
                self._failed_until = time.monotonic() + STORE_RETRY
            _log_failure(exc)
        finally:
            with self._lock:
                if self._lanes.get(key) is threading.current_thread():
                    del self._lanes[key]
            self._wake.set()

    def _send(self, notification_id: int, job_id: int, url: str, attempts: int) -> None:
        job = self.store.get_job(job_id)
        if job is None:  # gone from the history meanwhile
            self._record(notification_id, None)
            return
        attempts += 1
        payload = {**job.to_dict(), "text": describe(job)}
        del payload["notify"]  # a job's own receiver's URL is not for the others (secret)
        outcome, problem = self.post(url, payload)
        shown, problem = where(url), _redacted(problem, url)
        if outcome == "failed" and attempts <= len(self.delays):
            log.warning("notification of job %s to %s failed (attempt %s): %s", job_id, shown,
                        attempts, problem)
            self._record(notification_id, (attempts, time.time() + self.delays[attempts - 1]))
            return
        if outcome == "refused":
            log.error("notification of job %s to %s refused (%s)", job_id, shown, problem)
        elif outcome == "failed":
            log.error("notification of job %s to %s given up after %s attempts: %s", job_id,
                      shown, attempts, problem)
        self._record(notification_id, None)

    def _record(self, notification_id: int, later: tuple[int, float] | None) -> None:
        """Delete the notification (None) or set its (attempts, due); if the database fails,
        keep that in memory until `_settle` manages it, and do not send it again meanwhile."""
        with self._lock:
            self._unsettled[notification_id] = later
        self._settle()

    def _settle(self) -> None:
        with self._settling:
            with self._lock:
                unsettled = list(self._unsettled.items())
            for notification_id, later in unsettled:
                if later is None:
                    self.store.notification_done(notification_id)
                else:
                    self.store.notification_later(notification_id, *later)
                with self._lock:
                    if self._unsettled.get(notification_id, 0) == later:  # not replaced
                        del self._unsettled[notification_id]

    def post(self, url: str, payload: dict) -> tuple[str, str]:
        """One POST within `deadline`: ("sent", ""), ("refused", why) for what retrying
        cannot change (a 4xx other than 408 and 429, a URL requests cannot use), or
        ("failed", why)."""
        key = self.receiver_of(url)
        counted = key != OPERATOR  # (which has its one POST past its deadline, as every one)
        with self._lock:
            if key in self._stuck_at:
                return "failed", "it has not answered an earlier POST yet"
            if counted and self._stuck >= MAX_STUCK:
                return "failed", f"{self._stuck} receivers have not answered yet"
        result: list[tuple[str, str]] = []
        abandoned = threading.Event()

        def run() -> None:
            cuttable.SOCKETS.begin()
            try:
                result.append(self._post(url, payload))
            finally:
                cuttable.SOCKETS.forget()
                with self._lock:
                    if abandoned.is_set():
                        self._stuck -= counted
                        self._stuck_at.discard(key)

        thread = threading.Thread(target=run, name="notify-post", daemon=True)
        thread.start()
        thread.join(self.deadline)
        late = f"no answer within {self.deadline:g} s"
        if thread.is_alive() and cuttable.SOCKETS.cut(thread):
            thread.join(CUT_WAIT)  # its connection is shut down: the POST fails at once
            if not thread.is_alive():  # (unless it was answered just before the cut)
                return result[0] if result and result[0][0] != "failed" else ("failed", late)
        with self._lock:
            if not result and thread.is_alive():  # (a connection that could not be cut)
                abandoned.set()
                self._stuck += counted
                self._stuck_at.add(key)
                return "failed", late
        return result[0] if result else ("failed", "the POST ended without a result")

    def _post(self, url: str, payload: dict) -> tuple[str, str]:
        try:
            with cuttable.session() as session:
                resp = session.post(url, json=payload, timeout=self.timeout)
        except ValueError as exc:  # requests' InvalidURL and the like, and what urllib3 raises
            return "refused", f"unusable URL: {exc}"
        except requests.RequestException as exc:
            return "failed", str(exc)
        except Exception as exc:  # whatever else the URL or the answer may raise
            return "failed", f"{type(exc).__name__}: {exc}"
        resp.close()
        if 200 <= resp.status_code < 300:
            return "sent", ""
        problem = f"answered {resp.status_code}"
        if 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
            return "refused", problem
        return "failed", problem
