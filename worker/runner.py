"""The make processes of one workspace: start, follow, cancel, time out, and clean up after.

Each run is identified by the controller's job id. A run's record (JSON) and its log live in the
worker's state folder, so a worker that restarts still knows what its predecessor ran. make's
stdout and stderr are the log file itself: output lands in order even while nobody reads it, and
is not lost if the worker dies.

The lock that keeps builds apart is an flock on the workspace folder (and, with
`WORKER_LOCK=target`, on a per-target file inside `.maketrigger/locks/`). It is held by make
itself (the descriptors are inherited), so it lasts exactly as long as the build does, across
every process and container that shares the workspace.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum

from . import rules
from .threads import DaemonThreads

log = logging.getLogger(__name__)

RUN_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
POLL_SLICE = 86400.0  # seconds: the longest single wait for make's end (see `exited`)
START_WAIT = 3.0  # seconds a question about a run waits for a start of it under way (`get`)


class RunState(str, Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"


class Busy(Exception):
    """The workspace (or the target) is locked by another build."""


class RunExists(Exception):
    """A run with this id was started before: each job runs at most once."""


class UnknownRun(KeyError):
    """No run with this id is known here."""


class RunStarting(Exception):
    """A start of the run is still under way (its checks can take a while): ask again."""


class StartAbandoned(Exception):
    """The controller that sent the start gave up on it before make was started."""


class ShuttingDown(Exception):
    """The worker is stopping and takes no new builds."""


@dataclass
class Run:
    id: str
    target: str
    vars: dict
    state: RunState = RunState.RUNNING
    exit_code: int | None = None
    error: str | None = None
    started_at: float = 0.0
    finished_at: float | None = None
    timeout: float | None = None
    pid: int | None = None
    pid_start: str | None = None
    owner_pid: int = 0
    host: str = ""
    # In memory only:
    done: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)
    end_state: RunState | None = field(default=None, repr=False, compare=False)
    group_gone: threading.Event | None = field(default=None, repr=False, compare=False)
    end_reason: str | None = field(default=None, repr=False, compare=False)
    reported: bool = field(default=False, repr=False, compare=False)
    followers: int = field(default=0, repr=False, compare=False)  # run frames streams (`following`)
    followed: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    _PERSISTED = ("id", "target", "vars", "state", "exit_code", "error", "started_at",
                  "finished_at", "timeout", "pid", "pid_start", "owner_pid", "host")

    def record(self) -> dict:
        d = {k: getattr(self, k) for k in self._PERSISTED}
        d["state"] = self.state.value
        return d

    @classmethod
    def from_record(cls, d: dict) -> Run:
        run = cls(**{k: d.get(k) for k in cls._PERSISTED if k in d})
        run.state = RunState(d["state"])
        if run.state is not RunState.RUNNING:
            run.done.set()
        return run


class _Start:
    """A start under way (`Runner.starting`)."""

    def __init__(self, sender_waits: Callable[[], bool]):
        self.sender_waits = sender_waits
        self.given_up = False  # by `get`, its sender gone: it must not start
        self.done = threading.Event()

    def wanted(self) -> bool:
        return not self.given_up and self.sender_waits()


def describe_exit(code: int) -> str:
    """A readable end for a process return code: 'exit status 2', 'killed by SIGKILL'."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _process_start(pid: int) -> str | None:
    """The start time of a live process (field 22 of its stat), to tell a reused pid apart.
    A zombie counts as gone: it runs nothing, and may wait long for a reaper."""
    fields = _proc_stat(pid)
    if not fields or fields[0] in ("Z", "X") or len(fields) < 20:
        return None
    return fields[19]


def _alive(pid: int | None) -> bool:
    return bool(pid) and _process_start(pid) is not None


def exited(proc: subprocess.Popen, timeout: float | None) -> bool:
    """Wait until the process has exited (True) or `timeout` seconds have passed (False),
    without reaping it. Woken by the exit itself through a pidfd: Popen.wait(timeout) polls
    with sleeps growing to 50 ms, which made every build's end that much later."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd here (old kernel, seccomp): Popen's polling
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if timeout is None:
            return bool(poller.poll())
        deadline = time.monotonic() + timeout
        while True:  # in slices: poll takes at most 2**31 - 1 ms (24.8 days) at a time
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if poller.poll(min(left, POLL_SLICE) * 1000):
                return True
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """os.write until all of `data` is written (a write may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


TERM_LEAD = 0.02  # seconds between SIGTERM to make and to its whole group (Runner._stop)
GROUP_POLL = 0.05  # seconds between looks at whether a stopped build's group has ended
END_FIRST = 0.05  # seconds an ended run's record waits for its followers' end frames (_finish)


def group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs. Zombies do not count: they hold nothing
    (no file, no lock), and an orphan's may wait long for its reaper (PID 1; 1.7 s here)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone is there, though not ours to signal
        return True
    def runs_in_it(pid: int) -> bool:
        fields = _proc_stat(pid)  # state, ppid, pgrp, ...
        return bool(fields) and len(fields) > 2 and fields[2] == str(pgid) and \
            fields[0] not in ("Z", "X")
    # make, the group's leader, first: while it runs, no need to look through every process
    return runs_in_it(pgid) or any(runs_in_it(int(name)) for name in os.listdir("/proc")
                                   if name.isdigit())


def kill_group(pgid: int, sig: int) -> bool:
    """Signal a whole process group; a group that is already gone is not an error."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError as exc:
        log.warning("cannot signal process group %s: %s", pgid, exc)
        return False


class Runner:
    """Every build of one workspace that this worker process started or inherited."""

    def __init__(self, workdir: str, state_dir: str, *, lock_mode: str = "workspace",
                 job_timeout: float = 3600, kill_grace: float = 10, keep_runs: int = 100,
                 keep_log_bytes: int = 1 << 30):
        self.workdir = os.path.abspath(workdir)
        self.state_dir = state_dir
        self.runs_dir = os.path.join(state_dir, "runs")
        self.lock_mode = lock_mode
        self.job_timeout = job_timeout
        self.kill_grace = kill_grace
        self.keep_runs = keep_runs
        self.keep_log_bytes = keep_log_bytes  # 0: no bound on the kept logs' size
        self._environ = rules.build_environ(os.environ)  # make's, the same for every build
        self._make = rules.make_program(self._environ)
        self.host = socket.gethostname()
        self._lock = threading.Lock()
        self._active: dict[str, Run] = {}
        self._unsaved: dict[str, Run] = {}  # ended runs whose end is not on disk yet (_save_end)
        self._stopping = False
        # Starts under way, by run id (from the request's arrival to its answer): see
        # `starting` and `get`.
        self._starting: dict[str, list[_Start]] = {}
        self.last_end = 0.0  # when a build of this worker last ended (time.time())
        self._ends = 0  # runs ended since the run folder was last pruned
        # Bytes of log written since the run files were last weighed; as if a tenth of the
        # cap at first, so that each worker weighs them at its first look (what a predecessor
        # left, or a cap lowered since, is not left until this worker has logged that much).
        self._logged = keep_log_bytes // 10
        self._waiters = DaemonThreads("run")  # one waits for each make: its end, its timeout
        os.makedirs(self.runs_dir, exist_ok=True)

    # --- files ---------------------------------------------------------------------------
    def log_path(self, run_id: str) -> str:
        return os.path.join(self.runs_dir, f"{run_id}.log")

    def _record_path(self, run_id: str) -> str:
        return os.path.join(self.runs_dir, f"{run_id}.json")

    def _reserve(self, run_id: str) -> int:
        """Create the run's (empty) log file, before anything else of the run: RunExists if it
        is there, so a run id starts once even on workers sharing the state folder. The log,
        not the record, is the reservation: make needs it before it starts, and the record is
        written while make runs, one file creation (0.1-0.5 ms here) off the way to make."""
        try:
            return os.open(self.log_path(run_id),
                           os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise RunExists(f"run {run_id} was already started on this worker") from None

    def _save(self, run: Run, fd: int | None = None) -> None:
        """Add the run's record to its file as a line of its own: the last line that parses is
        the run's state, even after a crash cut a write short (`_load`). Appending costs a third
        of writing a new file and renaming it over the old one, here. `fd`: the new, empty file
        (closed here)."""
        line = json.dumps(run.record()).encode() + b"\n"
        if fd is not None:
            try:
                _write_all(fd, line)
            finally:
                os.close(fd)
            return
        fd = os.open(self._record_path(run.id), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            # After whatever is there: a line cut short by a crash, or a record without a
            # newline (as workers before this format wrote them), stays a line apart.
            _write_all(fd, b"\n" + line)
        finally:
            os.close(fd)

    def _save_end(self, run: Run) -> bool:
        """Write the ended run's record; False if that fails (a full or broken state folder).
        The run has ended all the same: `_finish` keeps it in `_unsaved`, where get() finds it,
        and `_save_unsaved` writes it at a later end or at shutdown. A worker that dies before
        that leaves the record `running`, and the next one's recover() reports the run `lost`,
        as any run whose end it cannot know."""
        try:
            self._save(run)
            return True
        except OSError as exc:
            log.error("run %s: ended %s, but its record cannot be written (%s); kept in memory "
                      "and written once it can be", run.id, run.state.value, exc)
            return False

    def _save_unsaved(self) -> None:
        """Write the records that could not be written when their runs ended (`_save_end`);
        those that still fail wait for the next try."""
        with self._lock:
            runs = list(self._unsaved.values())
        for run in runs:
            try:
                self._save(run)
            except OSError as exc:
                log.debug("run %s: its record still cannot be written: %s", run.id, exc)
                return
            with self._lock:
                self._unsaved.pop(run.id, None)
            log.info("run %s: its record (%s) is written now", run.id, run.state.value)

    def _note(self, run: Run, text: str) -> None:
        """Add maketrigger's word on the run's end to its log. Without it (a full disk), the
        run ends all the same: its `error` says the same."""
        try:
            with open(self.log_path(run.id), "ab") as f:
                f.write(text.encode())
        except OSError as exc:
            log.error("run %s: cannot add its end to its log: %s", run.id, exc)

    def _load(self, run_id: str) -> Run | None:
        try:
            with open(self._record_path(run_id), "rb", buffering=0) as f:
                lines = f.readall().splitlines()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("unreadable run record %s: %s", run_id, exc)
            return None
        for line in reversed(lines):  # the last line a crash did not cut short
            if not line.strip():
                continue
            try:
                return Run.from_record(json.loads(line))
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("unreadable line in run record %s: %s", run_id, exc)
        return None

    # --- locks ---------------------------------------------------------------------------
    def _take_locks(self, target: str) -> list[int]:
        """Open and flock what this build needs; raises Busy if another build holds it."""
        fds: list[int] = []
        try:
            fd = os.open(self.workdir, os.O_RDONLY | os.O_DIRECTORY)
            fds.append(fd)
            if self.lock_mode == "target":
                self._flock(fd, fcntl.LOCK_SH, "the workspace is locked by another build")
                fd = os.open(self._target_lock_file(target), os.O_RDWR | os.O_CREAT, 0o666)
                fds.append(fd)
                self._flock(fd, fcntl.LOCK_EX, f"target {target} is already being built")
            else:
                self._flock(fd, fcntl.LOCK_EX, "the workspace is busy with another build")
            return fds
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

    @staticmethod
    def _flock(fd: int, kind: int, busy_message: str) -> None:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise Busy(busy_message) from None
            raise

    def _target_lock_file(self, target: str) -> str:
        folder = os.path.join(self.workdir, ".maketrigger", "locks")
        if not os.path.isdir(folder):
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(self.workdir, ".maketrigger", ".gitignore"), "w") as f:
                f.write("# maketrigger's lock files\n*\n")
        return os.path.join(folder, hashlib.sha256(target.encode()).hexdigest()[:32] + ".lock")

    # --- runs ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def starting(self, run_id: str, sender_waits: Callable[[], bool] = lambda: True
                 ) -> Iterator[Callable[[], bool]]:
        """A start of `run_id` is under way for the block (its checks, then `start`, given the
        callable this yields as its `wanted`). A controller whose start timed out asks whether
        the run exists, and an answer of "unknown" given while the start was still at its
        checks (a makefile slow to read) had it start the job on another worker too. `get`
        tells such a start apart: one whose sender still waits is waited for; one whose sender
        has gone (`sender_waits()` false) is given up there and then, under the lock `start`
        looks at it with, so the answer "unknown" stays true."""
        entry = _Start(sender_waits)
        with self._lock:
            self._starting.setdefault(run_id, []).append(entry)
        try:
            yield entry.wanted
        finally:
            with self._lock:
                pending = self._starting[run_id]
                pending.remove(entry)
                if not pending:
                    del self._starting[run_id]
            entry.done.set()

    def start(self, run_id: str, target: str, variables: dict, timeout: float | None,
              wanted: Callable[[], bool] = lambda: True) -> Run:
        """Start `make -- target` as run `run_id`. The caller has validated target and vars.
        `wanted()`: whether whoever asked still waits for the answer; looked at last, as make
        is about to start (a controller that gave up on the start may ask another worker)."""
        if not RUN_ID_RE.fullmatch(run_id):
            raise rules.RuleError("run id must be 1-64 letters, digits, '_', '.' or '-'")
        limit = self.job_timeout if timeout is None else timeout
        argv = rules.make_argv(self.workdir, target, variables)
        with self._lock:
            if self._stopping:
                raise ShuttingDown("the worker is shutting down")
            if run_id in self._active or os.path.exists(self._record_path(run_id)):
                raise RunExists(f"run {run_id} was already started on this worker")
            if not wanted():
                raise StartAbandoned(f"run {run_id}: the start was given up by its sender")
            fds = self._take_locks(target)
            try:
                run = self._spawn(run_id, target, dict(variables), limit, argv, fds)
            finally:
                for fd in fds:  # make holds its own copies now
                    os.close(fd)
            self._active[run_id] = run
        self._waiters.submit(self._wait, run)
        return run

    def _spawn(self, run_id, target, variables, limit, argv, fds) -> Run:
        logfd = self._reserve(run_id)
        proc = None
        try:
            try:  # make cannot start (an OSError): the caller is told, and the id stays free
                os.write(logfd, ("+ " + " ".join(argv) + "\n").encode())
                proc = subprocess.Popen(  # argv[0] stays `make`: it is what $(MAKE) says
                    argv, executable=self._make, stdin=subprocess.DEVNULL, stdout=logfd,
                    stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True,
                    pass_fds=tuple(fds), close_fds=True, env=self._environ)
            finally:
                os.close(logfd)
            run = Run(id=run_id, target=target, vars=variables, started_at=time.time(),
                      timeout=limit, pid=proc.pid, pid_start=_process_start(proc.pid),
                      owner_pid=os.getpid(), host=self.host)
            run._proc = proc  # type: ignore[attr-defined]
            self._save(run, os.open(self._record_path(run_id),
                                    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o644))
        except BaseException:
            if proc is not None:  # a build nobody could account for must not run
                kill_group(proc.pid, signal.SIGKILL)
                proc.wait()
            for path in (self._record_path(run_id), self.log_path(run_id)):
                with contextlib.suppress(OSError):  # the id was not used after all
                    os.unlink(path)
            raise
        log.debug("run %s: started make %s (pid %s)", run_id, target, proc.pid)  # info: its end
        return run

    def _wait(self, run: Run) -> None:
        """Follow one make to its end, enforce its timeout, and write its result."""
        proc: subprocess.Popen = run._proc  # type: ignore[attr-defined]
        try:
            if not exited(proc, run.timeout):
                self._stop(run, RunState.FAILED, f"timed out after {run.timeout:g} s")
            code = proc.wait()
            if run.end_state is None:
                kill_group(proc.pid, signal.SIGKILL)  # what make left behind in its group
            else:  # stopped: its group gets SIGTERM too, and the run ends once it is gone
                run.group_gone.wait(TERM_LEAD + self.kill_grace + 5)
        except Exception:
            log.exception("run %s: lost track of make", run.id)
            # Not left running unwatched, holding its locks, with no time limit: stopped, and
            # reaped (or it stays a zombie) before the run is reported.
            kill_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                proc.wait(timeout=self.kill_grace + 5)
            self._finish(run, None, RunState.LOST, "the worker lost track of make")
        else:  # not in the try: a run that has ended must not end again as `lost`
            self._finish(run, code)
        self._save_unsaved()
        with contextlib.suppress(OSError):
            self._logged += os.stat(self.log_path(run.id)).st_size
        self._prune()

    def _finish(self, run: Run, code: int | None, state: RunState | None = None,
                error: str | None = None) -> None:
        """End the run in memory, then on disk. What cannot be written (a full state folder)
        is logged, not raised: a run left in `_active` would keep the worker busy, its
        followers waiting and its process group id signalled at shutdown, for ever."""
        run.exit_code = code if code is not None and code >= 0 else None
        if state is None:
            if run.end_state is not None:
                state, error = run.end_state, run.end_reason
            elif code == 0:
                state = RunState.SUCCEEDED
            else:
                state, error = RunState.FAILED, (f"make was {describe_exit(code)}" if code < 0
                                                 else f"make ended with {describe_exit(code)}")
        run.state, run.error, run.finished_at = state, error, time.time()
        if state is not RunState.SUCCEEDED:
            self._note(run, f"*** maketrigger: {state.value}: {error}\n")
        with self._lock:
            self.last_end = time.time()
        run.done.set()  # its followers answer now, and the record is written after them:
        if run.followers:  # writing it, this thread would compete with theirs for the
            run.followed.wait(END_FIRST)  # interpreter lock (their end frame ~0.05 ms later)
        saved = self._save_end(run)
        with self._lock:
            self._active.pop(run.id, None)  # from here on, get() reads the saved record
            if not saved:
                self._unsaved[run.id] = run  # ... or this one, until it is saved
        # A run that succeeded is news at `debug` only: the controller logs every job's end
        # already, and under Docker each line costs the round trip 0.1-0.15 ms (its log driver).
        log.log(logging.DEBUG if state is RunState.SUCCEEDED else logging.INFO,
                "run %s: make %s %s (%s)", run.id, run.target, state.value, error or "ok")

    def _stop(self, run: Run, state: RunState, reason: str) -> None:
        """SIGTERM make, then (TERM_LEAD later) its whole process group, then SIGKILL what is
        left of the group once the grace period has passed. make goes first: given SIGTERM
        together with its recipe's shell, GNU make 4.3 often lost the race to reap it and ended
        with "make: *** wait: No child processes.  Stop." and exit status 2 (17 times in 20
        stops of `echo; sleep` here, none in 60 with make first) instead of "make: *** [Makefile:2:
        slow] Terminated". The group still gets its SIGTERM, also once make has ended (make
        passes it on to its own children only): a sub-make deletes the target it was writing."""
        if run.done.is_set() or run.end_state is not None:
            return
        run.group_gone = threading.Event()  # set by _end_group; the run ends after it
        run.end_state, run.end_reason = state, reason
        try:
            os.kill(run.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        except PermissionError as exc:  # the group's signals below still reach the rest
            log.warning("run %s: cannot signal make (pid %s): %s", run.id, run.pid, exc)
        threading.Thread(target=self._end_group, args=(run,), name=f"kill-{run.id}",
                         daemon=True).start()

    def _end_group(self, run: Run) -> None:
        try:
            time.sleep(TERM_LEAD)
            kill_group(run.pid, signal.SIGTERM)
            deadline = time.monotonic() + self.kill_grace
            while group_alive(run.pid):
                if time.monotonic() >= deadline:
                    log.warning("run %s: still running %gs after SIGTERM; SIGKILL", run.id,
                                self.kill_grace)
                    kill_group(run.pid, signal.SIGKILL)
                    return
                time.sleep(GROUP_POLL)
        finally:
            run.group_gone.set()

    @contextlib.contextmanager
    def following(self, run: Run) -> Iterator[None]:
        """A stream of the run's frames (worker/api.py) under way: `_finish` writes the ended
        run's record once the streams have sent their end (or given up), so as not to hold
        them up."""
        with self._lock:
            run.followers += 1
            run.followed.clear()
        try:
            yield
        finally:
            with self._lock:
                run.followers -= 1
                if not run.followers:
                    run.followed.set()

    def cancel(self, run_id: str, reason: str = "cancelled on request") -> Run:
        run = self.get(run_id, start_wait=0)  # (a start under way: its sender asks again)
        self._stop(run, RunState.CANCELLED, reason)
        return run

    def get(self, run_id: str, start_wait: float = START_WAIT) -> Run:
        """The run. One not known yet, with a start of it under way whose sender still waits
        (see `starting`), is waited for up to `start_wait`, then RunStarting."""
        run = self._known(run_id)
        if run is not None:
            return run
        with self._lock:
            pending = list(self._starting.get(run_id, ()))
            for entry in pending:
                if not entry.sender_waits():
                    entry.given_up = True  # (`start` looks at it under this lock)
            live = [entry for entry in pending if not entry.given_up]
        deadline = time.monotonic() + start_wait
        for entry in live:
            if not entry.done.wait(max(0.0, deadline - time.monotonic())):
                break
        run = self._known(run_id)
        if run is not None:
            return run
        if any(not entry.done.is_set() for entry in live):
            raise RunStarting(f"run {run_id} is being started; ask again")
        raise UnknownRun(run_id)

    def _known(self, run_id: str) -> Run | None:
        with self._lock:
            run = self._active.get(run_id) or self._unsaved.get(run_id)
        if run is None and RUN_ID_RE.fullmatch(run_id):
            run = self._load(run_id)
        return run

    def refresh(self, run: Run) -> None:
        """Bring a run that this process does not run up to date for its followers: one loaded
        from its record (a sibling worker's on the same state folder, or one that a process
        before this one ran, as after a gunicorn HUP). Its end is seen once its record shows
        one, or once no live worker on this host owns it (then it is `lost` to them; the next
        worker start's `recover` records that). This process's own runs are ended by `_wait`."""
        if run.done.is_set():
            return
        with self._lock:
            if self._active.get(run.id) is run or self._unsaved.get(run.id) is run:
                return
        again = self._load(run.id)
        if again is None:
            run.state, run.error = RunState.LOST, "its record on the worker is gone"
        elif again.state is not RunState.RUNNING:
            run.state, run.exit_code, run.error, run.finished_at = (
                again.state, again.exit_code, again.error, again.finished_at)
        elif self._owned_elsewhere(again):
            return  # still running, as far as anyone here can tell
        else:
            run.state, run.error = RunState.LOST, "the worker process that ran it is gone"
        run.done.set()

    def _running_elsewhere(self, run_id: str) -> bool:
        """Whether another worker may still be running this run (its record says running and
        its owner lives, or is on another host): a sibling on the same state folder."""
        run = self._load(run_id)
        return run is not None and run.state is RunState.RUNNING and self._owned_elsewhere(run)

    def _owned_elsewhere(self, record: Run) -> bool:
        """Whether the worker that recorded this run may still be running it: another host's
        (nothing here can tell), or another live process on this one."""
        return record.host != self.host or (record.owner_pid != os.getpid()
                                            and _alive(record.owner_pid))

    @property
    def stopping(self) -> bool:
        """Shutting down: new builds are refused."""
        return self._stopping

    def active(self) -> list[Run]:
        with self._lock:
            return list(self._active.values())

    # --- start-up and shutdown -----------------------------------------------------------
    def recover(self) -> None:
        """End what a predecessor of this worker left running; mark its runs `lost`."""
        for name in os.listdir(self.runs_dir):
            if not name.endswith(".json"):
                continue
            run = self._load(name[:-5])
            if run is None or run.state is not RunState.RUNNING:
                continue
            same_host = run.host == self.host
            if same_host and run.owner_pid != os.getpid() and _alive(run.owner_pid):
                continue  # a live sibling worker on this host owns it
            reason = "the worker restarted during the build"
            if same_host and run.pid and _process_start(run.pid) == run.pid_start:
                log.warning("run %s: ending make (pid %s) left by a dead worker", run.id, run.pid)
                kill_group(run.pid, signal.SIGTERM)
                deadline = time.monotonic() + self.kill_grace
                while _process_start(run.pid) == run.pid_start and time.monotonic() < deadline:
                    time.sleep(0.05)
                kill_group(run.pid, signal.SIGKILL)
                reason += "; the build it left running was stopped"
            self._finish(run, None, RunState.LOST, reason)

    def shutdown(self, reason: str = "worker shutdown", linger: float = 2.0) -> None:
        """Refuse new builds, stop the running ones, and give the controller a moment to read
        their final state. Returns once they have ended (bounded by the kill grace)."""
        with self._lock:
            self._stopping = True
            runs = list(self._active.values())
        for run in runs:
            self._stop(run, RunState.CANCELLED, reason)
        deadline = time.monotonic() + self.kill_grace + 2
        for run in runs:
            run.done.wait(max(0.0, deadline - time.monotonic()))
        deadline = time.monotonic() + linger
        while runs and not all(r.reported for r in runs) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._save_unsaved()  # a last try, or the next worker reports them `lost`

    def _prune(self) -> None:
        """Keep the records and logs of about `keep_runs` finished runs, and logs of at most
        `keep_log_bytes` in all: once there are a tenth more runs, or the logs are over, the
        oldest go (in batches, so a busy worker does not sort its runs every time; the newest
        tenth always stay). The folder's names are looked at every tenth of `keep_runs` ends;
        its files are weighed and dated (a stat each: 0.4 ms for 110 runs here, in the thread
        that reaped make, as the next build's start arrives) only when there are too many
        runs, at this worker's first look, or when it has logged a tenth of `keep_log_bytes`
        since they were last weighed. A log without a record (a worker that died between
        reserving a run and recording it, or a version that kept the log of a make that could
        not start) counts as a run too, so it goes in its turn."""
        self._ends += 1
        weigh = bool(self.keep_log_bytes) and self._logged >= self.keep_log_bytes // 10
        batch = max(1, self.keep_runs // 10)
        if self._ends < batch and not weigh:
            return
        self._ends = 0
        try:
            with os.scandir(self.runs_dir) as names:
                entries = list(names)
        except OSError:
            return
        runs: dict[str, list] = {}  # run id -> [its record, its log], either may be None
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            if ext == ".json" or ext == ".log":
                runs.setdefault(stem, [None, None])[ext == ".log"] = entry
        if len(runs) <= self.keep_runs + batch and not weigh:
            return
        self._logged = 0
        with self._lock:
            active = set(self._active) | set(self._unsaved)  # an unsaved record stays for now
        oldest = sorted(  # by the record's age (its end), else the log's
            ((_stat(record or log_).st_mtime, run_id, record, log_)
             for run_id, (record, log_) in runs.items() if run_id not in active),
            key=lambda aged: aged[0])
        drop = 0
        if len(runs) > self.keep_runs + batch:
            drop = max(0, len(runs) - self.keep_runs)
        if self.keep_log_bytes:
            sizes = [_stat(log_).st_size if log_ else 0 for _, _, _, log_ in oldest]
            total, by_size = sum(sizes), 0
            while total > self.keep_log_bytes and by_size < len(oldest) - batch:
                total -= sizes[by_size]
                by_size += 1
            drop = max(drop, by_size)
        for _, run_id, record, log_ in oldest[:drop]:
            if record and self._running_elsewhere(run_id):
                continue  # a sibling's build, still going: its log and record stay
            for entry in (record, log_):
                if entry:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)


_GONE = os.stat_result((0,) * 10)


def _stat(entry: os.DirEntry) -> os.stat_result:
    """The entry's stat (cached by the entry), or zeros for a file removed meanwhile."""
    try:
        return entry.stat()
    except OSError:
        return _GONE
