"""Queued job -> idle worker -> followed to the end.

Queued jobs go, oldest first, to idle healthy workers: a new job is dispatched at once by the
thread that queued it, the next queued job by the thread that followed the one that ended, and
one dispatcher thread sleeps until woken (a worker that became healthy, a job some other thread
was dispatching meanwhile), so no polling interval and no hand-over sits between a trigger and
make starting. Each dispatched job gets a follower thread that starts it (or the request that
waits for it starts it) and copies the worker's log into the store and records how it ended.

At most once: a job is claimed for its worker (it stays `queued` with the worker recorded)
*before* the start request is sent, so a controller that dies mid-dispatch finds it on restart
and asks that worker, instead of running it again. A run the worker does not know ends `lost`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from worker import rules
from worker.threads import DaemonThreads

from . import json_numbers
from .log_writer import WRITE_BEHIND_AFTER, LogWriter
from .store import Job, JobState, Store, StoreError
from .workers import (
    RunStarted,
    RunUnknown,
    Worker,
    WorkerBusy,
    WorkerClient,
    WorkerError,
    WorkerPool,
    WorkerRejected,
    WorkerStopping,
)

log = logging.getLogger(__name__)

BUSY_BACKOFF = 1.0  # a worker whose workspace was locked by someone else is retried after this
HOUSEKEEPING = 1.0  # the loop also runs this often, for backoffs that expire
DISPATCH_PAGE = 25  # queued jobs read at a time (more pages only while workers have room)
MAX_START_FAILURES = 5  # a job that workers keep refusing with 5xx (or cannot be sent) fails
END_RECHECK = 5.0  # a request waiting for a job's end also reads the job this often
# After a start whose answer was lost, how long the worker is asked whether it started it.
START_ASK = 12.0
# A request that waits at least this long starts its job itself: longer than a start may take
# (workers.py: 2 s to connect, 30 s for the answer, START_ASK more to ask after an uncertain
# one), so starting it never keeps the request past its wait.
START_HERE_WAIT = 60.0


def ended_ago(run: dict) -> float | None:
    """How long before the worker's answer (its `now`) the run ended, by the worker's clock;
    None if the answer does not say (docker:// runs, older workers) or says nonsense."""
    return _ago(run, "finished_at")


def started_ago(run: dict) -> float | None:
    """The same for the run's start."""
    return _ago(run, "started_at")


def changed_here(event: dict) -> float | None:
    """When a worker's watch event says its files changed, on this controller's clock (as the
    jobs' started_at it is compared with), by how long ago the worker says it was: its
    `changed_ago` (its monotonic clock), or its `now` minus its `changed_at` (its wall clock,
    from a worker before `changed_ago`); either may differ from ours (another Swarm host). An
    event with neither: its changed_at as it is."""
    ago = json_numbers.finite(event.get("changed_ago"))
    if ago is None:
        ago = _ago(event, "changed_at")
    if ago is None:
        return json_numbers.finite(event.get("changed_at"))
    return time.time() - max(ago, 0.0)


def _ago(run: dict, field: str) -> float | None:
    now, then = json_numbers.finite(run.get("now")), json_numbers.finite(run.get(field))
    return None if now is None or then is None else json_numbers.finite(now - then)


class _EndWait:
    """One request waiting for one job's end; told the ended job, so it need not read it."""

    __slots__ = ("event", "job")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.job: Job | None = None


class Dispatcher:
    def __init__(self, store: Store, pool: WorkerPool, client: WorkerClient, *,
                 lost_after: float = 30.0):
        self.store = store
        self.pool = pool
        self.client = client
        self.lost_after = lost_after
        self.logged = threading.Condition()  # on every log append, and every state change
        self.log_version = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._closing = threading.Event()  # the server is stopping: waits answer at once
        self._lock = threading.Lock()
        self._watch_lock = threading.Lock()
        self._dispatching = threading.Lock()  # one dispatch pass at a time, in any thread
        self._running: dict[int, tuple[Worker, str]] = {}  # job id -> (worker, target)
        self._cancel: set[int] = set()
        self._start_failures: dict[int, int] = {}  # job id -> starts a worker refused with 5xx
        self._end_waits: dict[int, list[_EndWait]] = {}  # job id -> requests waiting for its end
        self._thread: threading.Thread | None = None
        self._followers = DaemonThreads("job")  # one starts and follows each job
        pool.on_change = self.wake
        pool.on_watch = self._watched
        self.ended = lambda job: None  # told of every job that ended (notifications)

    # --- control ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start discovery, pick up what a previous controller left, and start dispatching."""
        if self._thread is not None:
            return
        self.pool.start()
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.pool.stop()

    def wake(self) -> None:
        self._wake.set()

    def close_waits(self) -> None:
        """The server is stopping: requests waiting for a job's end answer now, with the job as
        it is, and log follows end, so that the process need not outlive them (a wait may last
        an hour). The jobs go on: the worker keeps them, the next controller follows them."""
        self._closing.set()
        with self._lock:
            waits = [w for ws in self._end_waits.values() for w in ws]
        for waiting in waits:
            waiting.event.set()
        self.notify_log()

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def notify(self) -> None:
        """A job's state changed: its log followers look again (they end with the job)."""
        self.notify_log()

    def notify_log(self) -> None:
        """A job's log grew: only its followers wake, not the requests waiting for an end."""
        with self.logged:
            self.log_version += 1
            self.logged.notify_all()

    def wait_for_end(self, job_id: int, seconds: float,
                     gone: Callable[[], bool] = lambda: False) -> Job | None:
        """The job once it has ended, or as it is when `seconds` have passed or `gone()` (the
        client hung up; looked at every END_RECHECK) (None if there is no such job). Woken only
        by this job's end, which comes with the ended job."""
        waiting = _EndWait()
        with self._lock:
            self._end_waits.setdefault(job_id, []).append(waiting)
        try:
            deadline = time.monotonic() + seconds
            job = self.store.get_job(job_id)
            while job is not None and not job.state.ended and not self.closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if waiting.event.wait(min(left, END_RECHECK)) and waiting.job is not None:
                    return waiting.job
                job = self.store.get_job(job_id)  # an end recorded elsewhere is seen too
                if gone():
                    break
            return job
        finally:
            with self._lock:
                waits = self._end_waits.get(job_id, [])
                if waiting in waits:
                    waits.remove(waiting)
                if not waits:
                    self._end_waits.pop(job_id, None)

    def _tell_ended(self, job: Job) -> None:
        """Answer the requests waiting for this job's end."""
        with self._lock:
            waits = self._end_waits.pop(job.id, [])
        for waiting in waits:
            waiting.job = job
            waiting.event.set()

    def wait_logged(self, since: int, timeout: float) -> int:
        """Block until a log grew or a state changed after `log_version` was `since`."""
        with self.logged:
            self.logged.wait_for(lambda: self.log_version != since, timeout)
            return self.log_version

    # --- the loop --------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(HOUSEKEEPING)
            self._wake.clear()
            with self._dispatching:
                self._dispatch_logged()

    def _dispatch_logged(self, keep: int | None = None) -> tuple[Job, Worker] | None:
        try:
            return self._dispatch(keep)
        except StoreError as exc:
            log.error("dispatch paused: %s", exc)
        except Exception:
            log.exception("dispatch failed; retrying")
        return None

    def _dispatch_here(self, start_here: int | None = None) -> None:
        """Dispatch what can start now in the calling thread (a new job then reaches make without
        a hand-over to the dispatcher thread); if that thread is at it already, it looks again.
        Job `start_here`, if it is dispatched, is also started by the calling thread (which waits
        for it anyway) and only then followed by a follower thread."""
        if not self.pool.has_room():
            # Nothing to do now, nor to wake anyone for: a job queued before this look is seen
            # by the thread that frees a worker, which dispatches after it let go (`_release`).
            return
        if self._thread is None or self._stop.is_set() or not self._dispatching.acquire(
                blocking=False):
            self.wake()
            return
        try:
            kept = self._dispatch_logged(keep=start_here)
        finally:
            self._dispatching.release()
        if kept is None:
            return
        job, worker = kept
        if worker.url.startswith("docker://"):  # a docker exec start is slow, and not followed
            self._followers.submit(self._run, job, worker, "start")
            return
        try:
            self._run(job, worker, "start here")
        except Exception:  # the job exists: its request still answers (with it as it is)
            log.exception("job %s: starting it failed", job.id)

    def _dispatch(self, keep: int | None = None) -> tuple[Job, Worker] | None:
        """Hand every queued job that can start now to a follower thread, oldest first, except
        job `keep`, which is returned (claimed) for the caller to start."""
        kept = None
        try:
            for job, worker in self._claim_ready():
                if job.id == keep:
                    kept = (job, worker)
                else:
                    self._followers.submit(self._run, job, worker, "start")
        except BaseException:
            if kept is not None:  # claimed for a caller that will not hear of it now
                self._followers.submit(self._run, *kept, "start")
            raise
        return kept

    def _claim_ready(self) -> Iterator[tuple[Job, Worker]]:
        """Claim, oldest first, each queued job that can start now, with its worker. Reads the
        queue a page at a time and stops as soon as no worker has room, so a long queue costs
        nothing while every worker is busy."""
        after = 0
        with self._lock:
            busy_targets = {target for _, target in self._running.values()}
        while (room := self.pool.room()) > 0:
            # Twice the room: a busy target's jobs may be skipped, and a long queue is not read
            # 25 jobs at a time to start one.
            page = self.store.dispatchable(after=after, limit=min(DISPATCH_PAGE, 2 * room),
                                           skip_targets=busy_targets)
            if not page:
                return
            after = page[-1].id
            for job in page:
                if job.target in busy_targets:
                    continue  # the same target never runs twice at once; later jobs go first
                with self.pool.lock:
                    worker = self.pool.pick(job.selector, job.target)
                    if worker is None:
                        if job.selector is None:  # no worker takes it now: nor its later jobs
                            busy_targets.add(job.target)  # (skipped in SQL from the next page)
                        continue
                    with self._lock:  # before the claim: a cancel finds it in one or the other
                        self._running[job.id] = (worker, job.target)
                    try:
                        claimed = self.store.claim(job.id, worker.url)
                    except BaseException:  # (a StoreError): it still waits in the queue
                        if self._drop(job.id, worker):
                            self._cancel_waiting_logged(job.id)
                        raise
                    if not claimed:  # ended meanwhile, or a cancel was recorded for it
                        self._drop(job.id, worker)
                        self._cancel_waiting_logged(job.id)  # (ends only a job still waiting)
                        continue
                    worker.jobs[job.id] = job.target
                busy_targets.add(job.target)
                yield job, worker
                if not self.pool.has_room():
                    return

    def recover(self) -> None:
        """Follow again the jobs a previous controller left running or being started, and end
        the waiting ones it was asked to cancel (the cancel was recorded before their claim)."""
        left = self.store.left_over()  # all of them: one left out would stay queued for ever
        for job in left:
            if job.state is JobState.QUEUED and job.worker is None:  # a cancel was asked
                self._cancel_waiting_logged(job.id)
        for job in (j for j in left if j.worker or j.state is JobState.RUNNING):
            if job.cancel_requested:  # asked of the previous controller: delivered now
                with self._lock:
                    self._cancel.add(job.id)
            worker = self.pool.get(job.worker) if job.worker else None
            if worker is None:
                self._end(job.id, JobState.LOST, error="no worker was recorded for this job")
                with self._lock:
                    self._cancel.discard(job.id)
                continue
            log.info("job %s: following it again on %s", job.id, worker.url)
            with self.pool.lock:
                worker.jobs[job.id] = job.target
            with self._lock:
                self._running[job.id] = (worker, job.target)
            self._followers.submit(self._run, job, worker, "recover")

    # --- one job ---------------------------------------------------------------------------
    def _run(self, job: Job, worker: Worker, how: str, events: Iterable | None = None) -> None:
        """Start and follow one job to its end. `how`: "start" (a claimed job), "start here"
        (the same, but following it is handed to a follower thread once it started), "recover"
        (left by a previous controller), "follow" (started: `events` is the run as it goes on),
        "reconcile" (a store error came between: find out where the job is, as "recover" does).
        """
        handed_over, ran = False, how not in ("start", "start here")
        try:
            while True:
                try:
                    handed_over, ran = self._drive(job, worker, how, events)
                    return
                except StoreError as exc:  # the worker may run it: never leave it unfollowed
                    events = None  # (_start closed a start's stream)
                    ran = True  # it may have started
                    if how == "start here":  # a request's thread: a follower takes it on
                        log.error("job %s: %s; reconciling it in a follower", job.id, exc)
                        self._followers.submit(self._run, job, worker, "reconcile")
                        handed_over = True
                        return
                    log.error("job %s: %s; reconciling it shortly", job.id, exc)
                    if self._stop.wait(2.0):
                        return
                    how = "reconcile"
        except Exception as exc:
            ran = True  # (or not: what locked a worker may have been this job all the same)
            log.exception("job %s: follower failed", job.id)
            self._end(job.id, JobState.LOST, error=f"the controller lost track of it: {exc}")
        finally:
            if not handed_over:
                self._release(job, worker, ran)

    def _drive(self, job: Job, worker: Worker, how: str,
               events: Iterable | None) -> tuple[bool, bool]:
        """One go at `_run`: (whether following the job was handed to a follower thread,
        whether it may have run on the worker)."""
        if how == "reconcile":
            job = self.store.get_job(job.id) or job
            if job.state.ended or (job.state is JobState.QUEUED and job.worker is None):
                return False, True  # ended, or waits in the queue again
            if job.state is JobState.QUEUED and not self._reclaim(job, worker):
                return False, True
        elif how in ("start", "start here"):
            job.worker = worker.url
            started, events = self._start(job, worker)
            if not started:
                return False, False
            if how == "start here":
                self._followers.submit(self._run, job, worker, "follow", events)
                return True, True
        elif how == "recover" and job.state is JobState.QUEUED and not self._reclaim(
                job, worker):
            return False, True
        while True:
            try:
                self._follow(job, worker, events)
                return False, True
            except StoreError as exc:  # the worker keeps the log: catch up once it works
                events = None
                log.error("job %s: %s; following again shortly", job.id, exc)
                if self._stop.wait(2.0):
                    return False, True

    def _release(self, job: Job, worker: Worker, ran: bool = True) -> None:
        """The job no longer occupies its worker: what waits for the worker may go. A cancel
        that came while it was lost and queued again (retries) ends it now. `ran`: whether it
        may have run there; if it did not (the worker refused it as busy), the workers that
        refused starts as busy stay refused for their BUSY_BACKOFF: what locks them is not it,
        and dispatching at once would ask the same worker again and again, thousands of times
        a second (the walkthrough's `--scale worker=3` on one workspace)."""
        with self.pool.lock:
            worker.jobs.pop(job.id, None)
            if ran:
                for w in self.pool.all():
                    w.unblock()  # whatever locked them may have been this job
        if self._drop(job.id, worker):
            self._cancel_waiting_logged(job.id)
        self.notify()
        self._dispatch_here()  # the next job, without waking the dispatcher thread for it

    def _drop(self, job_id: int, worker: Worker) -> bool:
        """Forget that `worker` has the job, unless it has been handed to another worker since
        (then that one's entry stays); True if a cancel was asked while `worker` had it."""
        with self._lock:
            assigned = self._running.get(job_id)
            if assigned is None or assigned[0] is not worker:
                return False
            del self._running[job_id]
            cancelled = job_id in self._cancel
            self._cancel.discard(job_id)
        return cancelled

    def _start(self, job: Job, worker: Worker) -> tuple[bool, Iterable | None]:
        """Ask the worker to start the job: (False, None) if it did not (requeued or ended);
        else True and the run as it goes on (`WorkerClient.follow`), if the start brought it."""
        events, run = None, None
        try:
            events = self.client.start_run(worker, self.store.run_id(job), job.target, job.vars,
                                           job.timeout)
        except RunStarted:
            pass  # our own start, retried: the first attempt got through
        except WorkerBusy as exc:
            log.debug("job %s: %s is busy (%s); requeued", job.id, worker.url, exc)
            with self.pool.lock:
                worker.block(job.target, time.monotonic() + BUSY_BACKOFF)
            self._unclaim(job, worker)
            return False, None
        except WorkerRejected as exc:
            self._end(job.id, JobState.FAILED, error=f"rejected by the worker: {exc}")
            return False, None
        except WorkerStopping as exc:  # not the job's failure: another worker, or this one back
            log.info("job %s: %s; requeued", job.id, exc)
            worker.healthy, worker.last_error = False, str(exc)  # (until it answers again)
            self._unclaim(job, worker)
            return False, None
        except WorkerError as exc:
            if not exc.uncertain:
                return self._requeue(job, worker, exc), None
            # It may have started: ask, rather than risk running it twice.
            asked = self._ask_started(job, worker, min(self.lost_after, START_ASK))
            if asked is None:
                return False, None
            started, run = asked
            if not started:
                return self._requeue(job, worker, exc), None  # it did not, and will not
        self._start_failures.pop(job.id, None)
        try:
            return self._started(job, run), events
        except BaseException:
            if events is not None:
                events.close()
            raise

    def _cancel_waiting_logged(self, job_id: int) -> None:
        try:
            self._cancel_waiting(job_id)
        except StoreError as exc:
            log.error("job %s: the cancel asked for cannot be recorded: %s", job_id, exc)

    def _cancel_waiting(self, job_id: int) -> bool:
        """End a job that no worker was asked to start, as cancelled."""
        ended = self.store.finish(job_id, JobState.CANCELLED, error="cancelled before it started",
                                  only_waiting=True)
        if ended:
            self._tell_ended(ended)
            self.ended(ended)
            self.notify()
        return ended is not None

    def _unclaim(self, job: Job, worker: Worker) -> None:
        """A start the worker did not take: the job waits in the queue again, or ends now if it
        was cancelled while the start was on its way. Unclaimed in the store before it leaves
        `_running`, so a cancel finds it in one or the other."""
        self.store.unclaim(job.id)
        if self._drop(job.id, worker):
            self._cancel_waiting(job.id)

    def _requeue(self, job: Job, worker: Worker, exc: WorkerError) -> bool:
        """A start the worker did not take: queued again, or failed after MAX_START_FAILURES."""
        failures = self._start_failures.get(job.id, 0) + 1
        self._start_failures[job.id] = failures
        if failures >= MAX_START_FAILURES:
            self._end(job.id, JobState.FAILED, error=f"could not be started after "
                                                    f"{failures} tries: {exc}")
            return False
        log.warning("job %s: cannot start on %s: %s; requeued", job.id, worker.url, exc)
        worker.healthy, worker.last_error = False, str(exc)
        self._unclaim(job, worker)
        return False

    def _started(self, job: Job, run: dict | None = None) -> bool:
        """The worker has the job's run (`run`, as it answered, when it was asked after the
        start: a start confirmed late keeps the time the run started)."""
        if not self.store.mark_running(job.id, started_ago(run) if run else None):
            self._cancel.add(job.id)  # cancelled while the start was on its way
        # One line per job at info, when it ends: a log line costs as much as a state change.
        log.debug("job %s: %s started on %s", job.id, job.target, job.worker)
        self.notify()
        return True

    def _reclaim(self, job: Job, worker: Worker) -> bool:
        """A previous controller (or this one, before a store error) was starting this job: did
        the worker get it? A worker that does not answer is asked again for lost_after."""
        asked = self._ask_started(job, worker, self.lost_after)
        if asked is None:
            return False
        started, run = asked
        if not started:
            self._unclaim(job, worker)  # it never started: dispatch it again
            return False
        return self._started(job, run)

    def _ask_started(self, job: Job, worker: Worker,
                     seconds: float) -> tuple[bool, dict | None] | None:
        """Whether the worker started the job's run, and the run as it answered (None if it
        did not), after a start whose answer was lost (its connection closed): asked again
        for `seconds` while the worker does not answer, or answers that a start of it is under
        way for a sender that still waits. Asked, the worker gives up a start of the run whose
        sender has gone (`Runner.get`), so "unknown" means it never starts there and the job
        may go to another worker. None if it could not be told: the job is then ended `lost`
        (or, the controller stopping, left claimed for the next one to ask)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                return True, self.client.get_run(worker, self.store.run_id(job))
            except RunUnknown:
                return False, None
            except WorkerError as exc:
                if self._stop.is_set():
                    return None  # left claimed: the next controller asks again
                if exc.gone or time.monotonic() >= deadline:
                    self._end(job.id, JobState.LOST, error=f"cannot ask {worker.url} whether "
                                                           f"it started: {exc}")
                    return None
                self._stop.wait(1.0)

    def _follow(self, job: Job, worker: Worker, events: Iterable | None = None) -> None:
        """Copy the run's log as it grows and record its end. Ends `lost` if the worker is gone
        (refused, no longer resolves, forgot the run) or silent for longer than lost_after.
        `events`: the run as its start brought it (read from where the store is)."""
        # A job that has just started has stored nothing of this attempt yet: no need to look.
        stored = job if events is not None else self.store.get_job(job.id)
        base, offset = stored.log_base, stored.run_log_offset  # offset: in the worker's log
        run_id = self.store.run_id(job)
        last_contact = time.monotonic()
        cancel_sent = False
        inline = WRITE_BEHIND_AFTER  # bytes still stored inline, before a LogWriter takes over
        while True:
            try:
                run = None
                writer = None
                try:
                    cancel_sent = cancel_sent or self._send_cancel(job, worker)
                    if events is None:
                        events = self.client.follow(worker, run_id, offset)
                    for item in events:
                        if isinstance(item, dict):
                            run = item  # the end, after the last byte of the log
                            break
                        if writer is not None:
                            writer.put(base + offset, item)
                        else:
                            self.store.append_log(job.id, base + offset, item)
                            self.notify_log()
                            inline -= len(item)
                            if inline <= 0:
                                writer = LogWriter(self.store, job.id, self.notify_log,
                                                   self._stop)
                        offset += len(item)
                        last_contact = time.monotonic()
                        cancel_sent = cancel_sent or self._send_cancel(job, worker)
                    if writer is not None:
                        writer, flushed = None, writer
                        flushed.close()  # all of the log is stored before its end is
                    if run is None:  # a stream that ended early, or a docker:// worker
                        run = self.client.get_run(worker, run_id)
                    last_contact = time.monotonic()
                    if run["state"] == "running":
                        continue
                    if run.get("log_size", 0) > offset:
                        continue  # the end of the log is still to copy
                    self._end(job.id, JobState(run["state"]), run.get("exit_code"),
                              run.get("error"), from_worker=True, ended_ago=ended_ago(run))
                    return
                finally:  # after the end is recorded: the rest of the stream can wait
                    try:
                        if events is not None:
                            events.close()
                    finally:
                        events = None
                        if writer is not None:  # the stream broke: keep what was read
                            writer.close()
            except RunUnknown:
                self._end(job.id, JobState.LOST,
                          error=f"worker {worker.url} no longer knows this run (it restarted?)")
                return
            except WorkerError as exc:
                if exc.gone or worker.gone or not self.pool.still_resolves(worker):
                    self._end(job.id, JobState.LOST, error=f"worker gone: {exc}")
                    return
                if self._answers(worker, run_id):
                    last_contact = time.monotonic()
                    self._stop.wait(0.1)  # never a busy loop on a stream that keeps breaking
                    continue  # a quiet build, not a lost worker: listen again
                silent = time.monotonic() - last_contact
                if silent > self.lost_after:
                    self._end(job.id, JobState.LOST,
                              error=f"worker silent for {silent:.0f} s "
                                    f"(TRIGGER_LOST_AFTER): {exc}")
                    return
                log.info("job %s: %s; retrying", job.id, exc)
                self._stop.wait(min(1.0, self.lost_after / 10))

    def _answers(self, worker: Worker, run_id: str) -> bool:
        try:
            self.client.get_run(worker, run_id)
            return True
        except WorkerError:
            return False

    def _send_cancel(self, job: Job, worker: Worker) -> bool:
        """Deliver a cancel the API asked for; True once the worker has it."""
        if job.id not in self._cancel:
            return False
        try:
            self.client.cancel_run(worker, self.store.run_id(job))
            return True
        except WorkerError as exc:
            log.warning("job %s: cancel not delivered yet: %s", job.id, exc)
            return False

    def _end(self, job_id: int, state: JobState, exit_code: int | None = None,
             error: str | None = None, from_worker: bool = False,
             ended_ago: float | None = None) -> None:
        """Record the job's end (or, lost with retries left, queue it again). An end that is
        the controller's own finding (lost, failed before it started), not a run's end as its
        worker wrote it into the log, gets a last log line saying so, as a retry does.
        `ended_ago`: how long before the worker's report of it the run ended (Store.finish)."""
        with self._lock:
            cancelled = job_id in self._cancel  # asked for: not to be run again
        if state is JobState.LOST and not cancelled and self.store.retry(job_id, error or "lost"):
            log.warning("job %s: lost (%s); queued again (retries)", job_id, error)
            self.notify()
            return  # the follower dispatches it again when it lets go of the job
        note = None if from_worker else f"\n*** maketrigger: {state.value}: {error}\n"
        finished = self.store.finish(job_id, state, exit_code, error, note=note,
                                     ended_ago=ended_ago)
        if finished is not None:
            self._tell_ended(finished)  # first: a request waiting for this job answers at once,
        time.sleep(0)  # and gets the interpreter now rather than at the next switch interval
        self.notify()
        if finished is not None:
            log.info("job %s: %s on %s %s%s", job_id, finished.target, finished.worker,
                     state.value, f" ({error})" if error else "")
            self.ended(finished)

    # --- requests from the API and the other sources -------------------------------------------
    def submit(self, target: str, variables: dict, selector: str | None, source: str,
               timeout: float | None = None, notify: str | None = None,
               retries: int = 0, start_here: bool = False) -> tuple[Job, bool]:
        """Queue a job (or join the identical queued one) and start it if it can start now.
        The caller has validated the target and variables (worker.rules). With `start_here`
        (a caller that waits for the job anyway, at least START_HERE_WAIT seconds) a new job
        that can start now is started in the calling thread: one hand-over fewer before make
        runs."""
        job, coalesced = self.store.create_job(target, variables, selector, source, timeout,
                                               notify, retries)
        if not coalesced:
            self._dispatch_here(job.id if start_here else None)
        return job, coalesced

    def fire(self, key: str, fire_time: float, target: str,
             variables: dict) -> tuple[Job, bool] | None:
        """A schedule's fire: its time claimed with its job (Store.fire_schedule), then started
        if it can start now. None if that fire time was claimed already."""
        fired = self.store.fire_schedule(key, fire_time, target, variables)
        if fired is not None and not fired[1]:
            self._dispatch_here()
        return fired

    def deliver(self, provider: str, keys: list[str], target: str,
                source: str) -> tuple[Job, bool] | None:
        """A webhook delivery: recorded with its job (Store.queue_delivery), then started if it
        can start now. None if it was seen before."""
        queued = self.store.queue_delivery(provider, keys, target, source)
        if queued is not None and not queued[1]:
            self._dispatch_here()
        return queued

    def cancel(self, job: Job) -> bool:
        """Cancel a job waiting in the queue at once, or ask the worker to stop one that is
        running or being started (a start on its way may already have reached make: the worker
        gets the cancel once the start is through, and the job ends as the run did)."""
        for _ in range(3):  # a claim or an unclaim may come between the two looks
            with self._lock:
                assigned = self._running.get(job.id)
                if assigned is not None:
                    self._cancel.add(job.id)
                    break
            if self._cancel_waiting(job.id):
                return True
        else:
            return False
        try:  # kept for a controller that restarts before the worker has it
            self.store.request_cancel(job.id)
        except StoreError as exc:
            log.error("job %s: the cancel asked for cannot be recorded: %s", job.id, exc)
        try:
            self.client.cancel_run(assigned[0], self.store.run_id(job))
        except RunUnknown:
            pass  # not started yet: the follower sends the cancel once it is
        except WorkerError as exc:
            log.warning("job %s: cancel not delivered yet: %s", job.id, exc)
        return True

    def _watched(self, worker: Worker, event: dict) -> None:
        """A worker's file watcher asks for a build: queue it for that worker's service, unless
        a build of it has not started yet or started after the change (replicas sharing the
        workspace each ask for the same edit; the first request's build may already run)."""
        target = rules.check_target_syntax(event.get("target"))
        paths = ", ".join(event.get("paths", [])[:5])
        changed_at = changed_here(event)
        with self._watch_lock:  # health checks of several workers run in parallel
            if changed_at is not None:
                covering = self.store.build_since(target, worker.name, changed_at)
                if covering is not None:
                    log.info("files changed on %s (%s): job %s builds them already",
                             worker.name, paths, covering.id)
                    return
            job, coalesced = self.submit(target, {}, worker.name, "watch")
        log.info("files changed on %s (%s): job %s%s", worker.name, paths, job.id,
                 " (joined the queued one)" if coalesced else "")

    def running_jobs(self) -> dict[int, str]:
        with self._lock:
            return {job_id: worker.url for job_id, (worker, _) in self._running.items()}
