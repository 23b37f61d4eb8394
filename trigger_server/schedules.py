"""Schedules: cron lines that queue jobs, exactly once per fire time.

`TRIGGER_SCHEDULE` (and the file named by `TRIGGER_SCHEDULE_FILE`) hold one schedule a line:
`<cron expression> <target> [NAME=VALUE ...]`, with standard 5-field expressions or `@hourly`,
`@daily`, `@weekly`, `@monthly`, `@yearly`, `@reboot`, evaluated in the timezone `TZ` (UTC by
default) with croniter. Each fire time is claimed in the database in one transaction with its
job, so it fires once even across threads and restarts; missed fire times run once on start
(`TRIGGER_SCHEDULE_CATCHUP=once`) or not at all (`none`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from worker import rules

from .store import iso
from .workers import not_offered

log = logging.getLogger(__name__)

CHECK_EVERY = 300.0  # seconds between the workers' checks of the lines (check_lines)
CHECK_LOOK = 1.0  # seconds between looks at whether the workers changed (a check at once)
MACROS = ("@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually", "@midnight")
REBOOT = "@reboot"


class ScheduleError(ValueError):
    """A schedule line that cannot be used; the message names the line."""


@dataclass(frozen=True)
class Schedule:
    expr: str
    target: str
    vars: dict = field(default_factory=dict, hash=False)
    line: str = ""

    @property
    def key(self) -> str:
        """A stable name for the schedule's state in the database."""
        return hashlib.sha256(self.line.encode()).hexdigest()[:16]

    def next_after(self, ts: float, tz: tzinfo) -> float | None:
        if self.expr == REBOOT:
            return None
        times = croniter(self.expr, datetime.fromtimestamp(ts, tz))
        return self._once_a_wall_time(times, times.get_next, tz)

    def latest_at_or_before(self, ts: float, tz: tzinfo) -> float | None:
        if self.expr == REBOOT:
            return None
        times = croniter(self.expr, datetime.fromtimestamp(ts + 0.001, tz))
        return self._once_a_wall_time(times, times.get_prev, tz)

    @property
    def fixed_hours(self) -> bool:
        """Whether the line fires at set hours (`30 2 * * *`, `@daily`), not every hour."""
        if self.expr.startswith("@"):
            return self.expr not in ("@hourly", REBOOT)
        return "*" not in self.expr.split()[1]

    def _once_a_wall_time(self, times: croniter, step, tz: tzinfo) -> float:
        """The fire time `step` finds, passing over the second time a wall-clock time comes
        round as the clocks go back (02:30 twice in an autumn night) for a line at set hours,
        which then fires once, as cron's own daemon does; a line for every hour fires in
        both."""
        when = step(float)
        while self.fixed_hours and datetime.fromtimestamp(when, tz).fold:
            when = step(float)
        return when


def parse_line(text: str, where: str) -> Schedule:
    """One schedule line; raises ScheduleError naming `where`."""
    parts = text.split()
    if parts[0].startswith("@"):
        expr, rest = parts[0], parts[1:]
        if expr not in (*MACROS, REBOOT):
            raise ScheduleError(f"{where}: unknown macro {expr!r} (use one of "
                                f"{', '.join((*MACROS, REBOOT))})")
    else:
        expr, rest = " ".join(parts[:5]), parts[5:]
        if len(parts) < 5:
            raise ScheduleError(f"{where}: {expr!r} is not a 5-field cron expression")
        try:
            croniter(expr)
        except (CroniterError, ValueError) as exc:
            why = str(exc).replace(f"[{expr}] ", "")
            if "range" in why or "bands" in why:
                why = ("a value is out of its field's range: minute 0-59, hour 0-23, day 1-31, "
                       "month 1-12, weekday 0-7")
            elif "step" not in why:  # a word where a number belongs: a field short, or a typo
                raise ScheduleError(f"{where}: {expr!r} is not a 5-field cron expression"
                                    ) from None
            raise ScheduleError(f"{where}: {expr!r} is not a valid cron expression ({why})"
                                ) from None
        try:  # valid fields can still name no real date (Feb 31st): croniter finds out by looking
            croniter(expr, datetime.now(UTC)).get_next(float)
        except CroniterBadDateError:
            raise ScheduleError(f"{where}: {expr!r} never fires (no such date)") from None
    if not rest:
        raise ScheduleError(f"{where}: no target after the cron expression")
    if any(word.startswith("#") for word in rest):
        raise ScheduleError(f"{where}: a '#' comment must have a line of its own (cron does not "
                            "take one at the end of a line either)")
    try:
        target = rules.check_target_syntax(rest[0])
        variables = dict(rules.parse_assignment(a) for a in rest[1:])
    except rules.RuleError as exc:
        raise ScheduleError(f"{where}: {exc}") from None
    return Schedule(expr, target, variables, " ".join(parts))


def parse(text: str, source: str) -> list[Schedule]:
    """Every schedule in `text` (blank lines and `#` comments skipped)."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            found.append(parse_line(line, f"{source} line {number}"))
    return found


def load(schedule: str, schedule_file: str) -> list[Schedule]:
    found = parse(schedule, "TRIGGER_SCHEDULE")
    if schedule_file:
        try:
            with open(schedule_file, encoding="utf-8") as f:
                found += parse(f.read(), schedule_file)
        except OSError as exc:
            raise ScheduleError(f"TRIGGER_SCHEDULE_FILE: cannot read {schedule_file}: {exc}") \
                from None
    return found


def timezone(name: str) -> tzinfo:
    """The zone TZ names: an IANA key (`Europe/Berlin`, also as `:Europe/Berlin`), or a zone
    file by its path, as POSIX allows (`:/etc/localtime`, which many hosts set)."""
    if not name or name == "UTC":
        return UTC
    key = name.lstrip(":")
    try:
        if key.startswith("/"):
            with open(key, "rb") as f:
                return ZoneInfo.from_file(f, key=key)
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ScheduleError(f"TZ={name!r} is not a known timezone: {exc}") from None


class Scheduler:
    """One thread that sleeps until the next fire time and queues that schedule's job."""

    def __init__(self, schedules: list[Schedule], store, dispatcher, tz: tzinfo,
                 catchup: str = "once", pool=None):
        if catchup not in ("once", "none"):
            raise ScheduleError(f"TRIGGER_SCHEDULE_CATCHUP must be once or none, not {catchup!r}")
        self.schedules = schedules
        self.store = store
        self.dispatcher = dispatcher
        self.tz = tz
        self.catchup = catchup
        self.pool = pool  # the workers, asked whether they offer each line's target and vars
        self._problems: dict[str, str | None] = {}  # schedule key -> as of the last check
        self._stop = threading.Event()
        self._next: dict[str, float | None] = {}

    def start(self) -> None:
        if not self.schedules:
            return
        self.catch_up()
        threading.Thread(target=self._loop, name="scheduler", daemon=True).start()
        if self.pool is not None:
            threading.Thread(target=self._check_loop, name="schedule-check", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def catch_up(self, now: float | None = None) -> None:
        """On start: fire @reboot, run missed fire times once (or skip them), plan the rest."""
        now = time.time() if now is None else now
        for s in self.schedules:
            last = self.store.schedule_state(s.key)[0]
            if s.expr == REBOOT:
                self._fire(s, now)
                continue
            latest = s.latest_at_or_before(now, self.tz)
            if last is None:
                self.store.claim_fire(s.key, latest)  # new: nothing was missed
            elif latest > last:
                if self.catchup == "once":
                    log.info("schedule %r: missed %s; running it once now", s.line, iso(latest))
                    self._fire(s, latest)
                else:
                    self.store.claim_fire(s.key, latest)
            self._next[s.key] = s.next_after(max(now, latest), self.tz)

    def _check_loop(self) -> None:
        """check_lines once a worker is healthy, again every CHECK_EVERY, and as soon as the
        healthy workers or the variables they take changed (a worker recreated with other
        WORKER_VARS, or down and up again, perhaps on another makefile)."""
        seen, changed, due = None, True, 0.0
        while True:
            workers = tuple(sorted((w.url, w.vars or frozenset()) for w in self.pool.all()
                                   if w.healthy))
            changed, seen = changed or workers != seen, workers
            if workers and (changed or time.monotonic() >= due):
                try:
                    self.check_lines()
                except Exception:
                    log.exception("schedules: cannot ask the workers about the lines")
                changed, due = False, time.monotonic() + CHECK_EVERY
            if self._stop.wait(CHECK_LOOK):
                return

    def check_lines(self) -> None:
        """Ask the workers whether they take each line's target and variables, from one
        listing of their targets, and keep the answer for `describe`. The start check can only
        read a line's syntax; a line the workers refuse fires as jobs that fail, each time.
        A warning is logged when a line's problem appears or changes, a word when it is gone."""
        offered = self.pool.offered()
        for s in self.schedules:
            problem = self.pool.refuses_vars(None, s.vars)
            if problem is None and offered is not None and s.target not in offered:
                problem = not_offered(s.target)
            before = self._problems.get(s.key)
            if offered is None and problem is None and before == not_offered(s.target):
                problem = before  # no list now: the last one's word on the target stands
            self._problems[s.key] = problem
            if problem and problem != before:
                log.warning("schedule %r: %s; its jobs will fail until that changes", s.line,
                            problem)
            elif before and not problem:
                log.info("schedule %r: the workers take it now", s.line)

    def _fire(self, s: Schedule, fire_time: float) -> None:
        """Queue the schedule's job, unless `fire_time` was claimed (fired) already."""
        fired = self.dispatcher.fire(s.key, fire_time, s.target, s.vars)
        if fired is None:
            return
        job, coalesced = fired
        log.info("schedule %r fired: job %s%s", s.line, job.id,
                 " (joined the queued one)" if coalesced else "")

    def run_due(self, now: float) -> None:
        for s in self.schedules:
            due = self._next.get(s.key)
            if due is not None and due <= now:
                self._fire(s, due)
                self._next[s.key] = s.next_after(max(now, due), self.tz)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_due(time.time())
            except Exception:  # a fire not recorded is tried again (not every 10 ms)
                log.exception("schedules: firing failed; retrying in 2 s")
                self._stop.wait(2.0)
                continue
            upcoming = [t for t in self._next.values() if t is not None]
            wait = min(upcoming) - time.time() if upcoming else 3600
            self._stop.wait(min(max(wait, 0.01), 60))  # wake at least each minute: clock jumps

    def describe(self) -> list[dict]:
        out = []
        for s in self.schedules:
            last_fire, last_job = self.store.schedule_fired(s.key)  # not a time skipped
            job = self.store.get_job(last_job) if last_job else None
            out.append({
                "schedule": s.line, "cron": s.expr, "target": s.target, "vars": s.vars,
                "next_fire": iso(self._next.get(s.key) or s.next_after(time.time(), self.tz)),
                "last_fire": iso(last_fire),
                "last_job": job.to_dict() if job else None,
                "problem": self._problems.get(s.key),
            })
        return out
