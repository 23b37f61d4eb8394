"""The builds of docker:// workers: each a `docker exec` of make in the worker's container, its
output kept by byte offset, its end, time limit and cancel handled from here. The entry, the
containers it names and the Docker errors are docker_workers.py's.

A build is `make -C <workdir> [NAME=VALUE ...] -- <target>`, checked by worker.rules and passed
as an argv behind a fixed `sh -c` script (no request text in it), which records make's process
group id in /tmp/maketrigger-<run>.pid and on its first output line. Cancel and time limits
signal that group inside the container (docker exec has no kill): SIGTERM, then SIGKILL after
`kill_grace`. The output goes into a bounded buffer read by byte offset; the exit status comes
from the exec's inspect.

Runs live in this process only. After a controller restart, a run is unknown: a build that the
previous controller left running is found by its pid file and stopped, and the job ends `lost`.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import docker.errors

from worker import makefile, rules

from .docker_workers import (
    ENGINE,
    DockerProblem,
    DockerWorker,
    Options,
    container_name,
    docker_api,
    parse_entry,
)
from .workers import (
    RunStarted,
    RunUnknown,
    Worker,
    WorkerBusy,
    WorkerError,
    WorkerRejected,
    _short,
)

log = logging.getLogger(__name__)

UNUSABLE_GRACE = 5.0  # a missing container or daemon for this long fails jobs, before: they wait
START_WAIT = 10.0  # seconds for a started container to be running
POLL = 0.5  # the watcher's tick: time limits, SIGKILL after the grace
EXEC_CHECK = 2.0  # seconds between looks at whether make still runs (its output may stay open)
LINGER = 2.0  # after make ended, its output is read until none came for this long
FIRST_LINE_PATIENCE = 30.0  # ... and, if its first line (make's group) was not read yet, longer
QUIET = 2.0  # a log stream with nothing new returns; the dispatcher asks get_run, then again
DAEMON_PATIENCE = 60.0  # an unreachable daemon for this long during a build: the run is lost
CHUNK = 64 * 1024
MAX_BUFFERED = 16 * 1024 * 1024  # unread output kept per run; beyond, the pump waits
UNREAD_PATIENCE = 60.0  # ... unless nobody has read for this long: then output is dropped
KEEP_RUNS = 200  # finished runs kept for get_run
CACHE_TTL = 5.0  # targets and the container probe
RUN_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# The launcher's first line on stdout. Not always the first in the stream: stdout and stderr are
# two pipes, and a make that fails at once may have its stderr line come first.
_PGID_LINE = re.compile(rb"(?m)^maketrigger-pgid (\d+)\n")
PGID_SEARCH = 4096  # bytes of output looked through for it

# The fixed scripts. Request data only ever arrives as their arguments ("$1", "$@").
# Launch: record the process group (the exec'd shell leads its own, or setsid made it), then
# become make.
LAUNCH = 'echo $$ > "$1" || exit 125; shift; echo "maketrigger-pgid $$"; exec "$@"'
# What a container offers: whether an exec'd process leads its own process group (runc: yes),
# the owner of the workdir (builds run as them by default), make and setsid.
PROBE = ('read -r _ _ _ _ g _ < /proc/$$/stat; [ "$g" = "$$" ] && echo leader=1; '
         'echo "owner=$(stat -c %u:%g -- "$1" 2>/dev/null)"; '
         'echo "make=$(command -v make)"; echo "setsid=$(command -v setsid)"')
# make (the group's leader) first, then, 20 ms later, its whole group: given SIGTERM together
# with its recipe's shell, GNU make 4.3 often loses the race to reap it and ends with "make:
# *** wait: No child processes.  Stop." and exit status 2 instead of "Terminated" (seen in CI;
# worker/runner.py Runner._stop does the same). The group's signal is the script's status.
SIGNAL = ('kill -s "$1" -- "$2" 2>/dev/null; sleep 0.02 2>/dev/null; '
          'kill -s "$1" -- "-$2"')
CLEANUP = 'if [ -n "$2" ]; then kill -s KILL -- "-$2" 2>/dev/null; fi; rm -f -- "$1"'
READ_PIDFILE = 'cat -- "$1" 2>/dev/null'


# --- one run's output ------------------------------------------------------------------------
class RunLog:
    """A run's output by byte offset. Bytes before the offset the reader last asked for are
    dropped. At most `limit` unread bytes are kept: beyond, a writer waits for the reader (make
    then waits on its full pipe), unless nobody has read for `patience` seconds: then output is
    dropped, and the log says how much."""

    def __init__(self, limit: int = MAX_BUFFERED, patience: float = UNREAD_PATIENCE):
        self.cond = threading.Condition()
        self.buf = bytearray()
        self.base = 0
        self.limit = limit
        self.patience = patience
        self.last_read = time.monotonic()
        self.received = 0  # every byte appended or dropped
        self.dropped = 0  # dropped since the last marker
        self.closed = False

    @property
    def size(self) -> int:
        return self.base + len(self.buf)

    def append(self, data: bytes, force: bool = False) -> None:
        with self.cond:
            self.received += len(data)
            while (not force and self.buf and len(self.buf) + len(data) > self.limit
                   and time.monotonic() - self.last_read < self.patience):
                self.cond.wait(1.0)
            if not force and self.buf and len(self.buf) + len(data) > self.limit:
                self.dropped += len(data)
                return
            if self.dropped:
                self.buf += (f"\n*** maketrigger: {self.dropped} bytes of output dropped "
                             "(nobody read the log)\n").encode()
                self.dropped = 0
            self.buf += data
            self.cond.notify_all()

    def progress(self) -> tuple[int, int]:
        """Changes while output comes in or is read."""
        return self.received, self.base

    def close(self) -> None:
        with self.cond:
            if self.dropped:
                self.append(b"", force=True)
            self.closed = True
            self.cond.notify_all()

    def read(self, offset: int, n: int) -> bytes:
        """Up to `n` bytes from `offset`; what lies before `offset` is forgotten."""
        with self.cond:
            if offset < self.base or offset > self.size:
                raise ValueError(f"offset {offset} is outside the kept log "
                                 f"({self.base}-{self.size})")
            del self.buf[:offset - self.base]
            self.base = offset
            self.last_read = time.monotonic()
            self.cond.notify_all()  # room for a waiting writer
            return bytes(self.buf[:n])

    def wait(self, offset: int, timeout: float) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.size > offset or self.closed, timeout)


@dataclass
class DockerRun:
    id: str
    target: str
    vars: dict
    container: str
    container_id: str
    pidfile: str
    timeout: float
    kill_grace: float
    exec_id: str = ""
    pgid: int | None = None
    state: str = "running"
    exit_code: int | None = None
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    end_state: str | None = None  # set by cancel / the time limit: how it ends once make ends
    end_reason: str | None = None
    kill_at: float | None = None  # monotonic time of the SIGKILL after a SIGTERM
    log: RunLog = field(default_factory=RunLog, repr=False)
    pumped: threading.Event = field(default_factory=threading.Event, repr=False)

    def record(self) -> dict:
        return {"id": self.id, "target": self.target, "vars": self.vars, "state": self.state,
                "exit_code": self.exit_code, "error": self.error,
                "started_at": self.started_at, "finished_at": self.finished_at,
                "timeout": self.timeout, "host": self.container, "log_size": self.log.size}


@dataclass(frozen=True)
class Probe:
    leader: bool
    owner: str
    make: bool
    setsid: bool


def _describe_exit(code: int) -> str:
    if code > 128:
        with contextlib.suppress(ValueError):
            return f"exit status {code} (128 + {signal.Signals(code - 128).name})"
    return f"exit status {code}"


# --- the transport ---------------------------------------------------------------------------
class DockerTransport:
    """WorkerClient's calls for docker:// workers, with the same shapes and errors."""

    def __init__(self):
        self._lock = threading.Lock()
        self._runs: dict[str, DockerRun] = {}
        self._busy: dict[str, str] = {}  # container id -> the run building there
        self._listing: dict[str, int] = {}  # container id -> readings of its makefile under way
        self._unusable: dict[str, float] = {}  # worker url -> since when (monotonic)
        self._cache: dict[tuple, tuple[float, object]] = {}

    # --- health ----------------------------------------------------------------------------
    def health(self, worker: Worker) -> dict:
        opts, name = parse_entry(worker.configured), container_name(worker)
        try:
            with docker_api(name):
                attrs = ENGINE.api().inspect_container(name)
        except DockerProblem as exc:
            return self._unusable_health(worker, opts, exc)
        self._unusable.pop(worker.url, None)
        worker.fails_jobs = False
        status = attrs["State"]["Status"]
        _show(worker, status, (attrs["State"].get("Health") or {}).get("Status"))
        if status in ("created", "exited") and opts.start == "never":
            raise WorkerError(f"container {name} is {status} (start=never)")
        if status not in ("running", "created", "exited"):
            raise WorkerError(f"container {name} is {status}")
        return self._health_body(attrs["Id"], opts, attrs)

    def _unusable_health(self, worker: Worker, opts: Options, exc: DockerProblem) -> dict:
        """Unhealthy for UNUSABLE_GRACE (jobs wait); then healthy only to fail its jobs."""
        since = self._unusable.setdefault(worker.url, time.monotonic())
        _show(worker, "missing" if exc.missing else "unreachable", None)
        if time.monotonic() - since < UNUSABLE_GRACE:
            raise WorkerError(str(exc))
        if not worker.fails_jobs:
            log.warning("%s: %s; jobs for it now fail", worker.url, exc)
        worker.fails_jobs = True
        if isinstance(worker, DockerWorker):
            worker.problem = str(exc)
        return self._health_body("", opts, None)

    def _health_body(self, container_id: str, opts: Options, attrs: dict | None) -> dict:
        with self._lock:
            runs = [r for c, r in self._busy.items() if c == container_id]
        return {"ok": True, "busy": bool(runs), "runs": runs, "lock": "workspace",
                "job_timeout": opts.timeout,
                # what the API checks a trigger's variables against, as for agent workers
                "vars": list(opts.vars), "vars_setting": "the entry's vars=",
                "workdir": _workdir(opts, attrs) if attrs else opts.workdir}

    # --- targets ---------------------------------------------------------------------------
    def targets(self, worker: Worker) -> tuple[list[dict], bool]:
        """The container's targets, and whether they are the list read before the build now
        running there (see _targets)."""
        opts, name = parse_entry(worker.configured), container_name(worker)
        try:
            attrs = self._inspect(name)
            if not attrs["State"]["Running"]:
                raise WorkerError(f"container {name} is {attrs['State']['Status']}: its targets "
                                  "are read once it runs (a build starts it)")
            return self._targets(attrs, opts)
        except DockerProblem as exc:
            raise WorkerError(str(exc)) from None
        except makefile.MakefileError as exc:
            raise WorkerError(f"container {name}: {exc}") from None

    def _targets(self, attrs: dict, opts: Options,
                 run_id: str | None = None) -> tuple[list[dict], bool]:
        """The buildable targets, read with make in the container (cached for CACHE_TTL), and
        whether they are stale: reading them may remake included makefiles (GNU make does,
        even under -q), which must not happen beside a build, so while another run builds
        there the list read before is kept. `run_id`: the run about to start, itself."""
        workdir, (user, _) = _workdir(opts, attrs), self._build_user(attrs, opts)
        key = ("targets", attrs["Id"], workdir, user)
        cached = self._cache.get(key)
        if cached and time.monotonic() - cached[0] < CACHE_TTL:
            return cached[1], False  # type: ignore[return-value]
        with self._lock:
            building = self._busy.get(attrs["Id"])
            if cached and building not in (None, run_id):
                return cached[1], True  # type: ignore[return-value]
            if building is None:  # a build does not start meanwhile (start_run)
                self._listing[attrs["Id"]] = self._listing.get(attrs["Id"], 0) + 1
        try:
            code, out, err = self._exec(attrs, ["make", "-C", workdir, "-pRrq", "--", ":"],
                                        user, env={"LC_ALL": "C"})
        finally:
            if building is None:
                with self._lock:
                    left = self._listing.pop(attrs["Id"]) - 1
                    if left:
                        self._listing[attrs["Id"]] = left
        if code in (126, 127) and b"\n# Files" not in out:
            raise makefile.MakefileError(f"cannot run make: {(out + err).decode(errors='replace')}")
        database = makefile.check_database(out, err)
        names, makefiles = makefile.parse_targets(database)
        if not makefiles:  # make read none (it prints a database all the same)
            raise makefile.MakefileError(makefile.no_makefile(workdir))
        docs: dict[str, str] = {}
        if makefiles:
            paths = [posixpath.join(workdir, p) for p in makefiles]
            _, text, _ = self._exec(attrs, ["cat", "--", *paths], user)
            docs = makefile.parse_descriptions(text.decode("utf-8", "replace"))
        found = [{"name": n, "description": docs.get(n, "")} for n in names
                 if rules.target_allowed(n, opts.targets)]
        self._cache[key] = (time.monotonic(), found)
        return found, False

    # --- start -----------------------------------------------------------------------------
    def start_run(self, worker: Worker, run_id: str, target: str, variables: dict,
                  timeout: float | None) -> dict:
        opts, name = parse_entry(worker.configured), container_name(worker)
        with self._lock:
            if run_id in self._runs:
                raise RunStarted(f"run {run_id} was already started in {name}")
        target, variables, limit = _check_request(opts, run_id, target, variables, timeout)
        try:
            attrs = self._inspect(name)
        except DockerProblem as exc:
            if worker.fails_jobs:  # for UNUSABLE_GRACE already: the job fails, naming why
                raise WorkerRejected(f"{worker.url}: {exc}") from None
            raise WorkerError(str(exc)) from None  # requeued; the health checks take over
        with self._lock:
            if attrs["Id"] in self._busy:
                raise WorkerBusy(f"container {name} is building run {self._busy[attrs['Id']]}")
            if attrs["Id"] in self._listing:
                raise WorkerBusy(f"container {name} is reading its makefile")
            self._busy[attrs["Id"]] = run_id
        try:
            return self._start(attrs, opts, run_id, target, variables, limit)
        except BaseException:
            with self._lock:
                if self._busy.get(attrs["Id"]) == run_id and run_id not in self._runs:
                    del self._busy[attrs["Id"]]
            raise

    def _start(self, attrs: dict, opts: Options, run_id: str, target: str, variables: dict,
               limit: float) -> dict:
        name = attrs["Name"].lstrip("/")
        try:
            attrs = self._running(attrs, opts)
            user, probe = self._build_user(attrs, opts)
            if not probe.make:
                raise WorkerRejected(f"make is not installed in container {name}")
            if not probe.leader and not probe.setsid:
                raise WorkerRejected(f"container {name} runs exec'd commands in a shared process "
                                     "group and has no setsid (util-linux) to give make its own")
            known = {t["name"] for t in self._targets(attrs, opts, run_id)[0]}
        except DockerProblem as exc:
            raise (WorkerRejected if exc.missing else WorkerError)(str(exc)) from None
        except makefile.MakefileError as exc:
            raise WorkerRejected(f"container {name}: {exc}") from None
        if target not in known:
            raise WorkerRejected(f"target {target} is not defined in the makefile of {name}"
                                 + (" (or not allowed by targets=)" if opts.targets else ""))
        argv = rules.make_argv(_workdir(opts, attrs), target, variables)
        pidfile = f"/tmp/maketrigger-{run_id}.pid"
        cmd = [*([] if probe.leader else ["setsid", "-w"]),
               "sh", "-c", LAUNCH, "maketrigger", pidfile, *argv]
        run = DockerRun(id=run_id, target=target, vars=dict(variables), container=name,
                        container_id=attrs["Id"], pidfile=pidfile, timeout=limit,
                        kill_grace=opts.kill_grace)
        run.log.append(("+ " + " ".join(argv) + "\n").encode())
        try:
            with docker_api(name):
                run.exec_id = ENGINE.api().exec_create(attrs["Id"], cmd, stdout=True,
                                                       stderr=True, user=user)["Id"]
        except DockerProblem as exc:
            raise WorkerError(str(exc)) from None
        with self._lock:
            self._runs[run_id] = run
        try:
            with docker_api(name):
                stream = ENGINE.api().exec_start(run.exec_id, stream=True)
        except DockerProblem as exc:
            self._finish(run, None, "lost", f"the exec may have started: {exc}")
            raise WorkerError(str(exc), uncertain=True) from None
        threading.Thread(target=self._pump, args=(run, stream), name=f"exec-out-{run_id}",
                         daemon=True).start()
        threading.Thread(target=self._watch, args=(run, stream), name=f"exec-{run_id}",
                         daemon=True).start()
        log.info("run %s: make %s in container %s as %s", run_id, target, name, user or "default")
        self._prune()
        return run.record()

    def _inspect(self, name: str) -> dict:
        with docker_api(name):
            return ENGINE.api().inspect_container(name)

    def _running(self, attrs: dict, opts: Options) -> dict:
        """The container, running: started first if it is stopped and start=auto."""
        name, status = attrs["Name"].lstrip("/"), attrs["State"]["Status"]
        if status == "running":
            return attrs
        if status not in ("created", "exited") or opts.start == "never":
            raise WorkerError(f"container {name} is {status}"
                              + (" (start=never)" if opts.start == "never" else ""))
        log.info("starting container %s for a build", name)
        with docker_api(name):
            ENGINE.api().start(attrs["Id"])
        deadline = time.monotonic() + START_WAIT
        while time.monotonic() < deadline:
            attrs = self._inspect(attrs["Id"])
            if attrs["State"]["Running"]:
                return attrs
            if attrs["State"]["Status"] in ("exited", "dead"):
                break
            time.sleep(0.1)
        raise WorkerRejected(f"container {name} did not keep running once started (it is "
                             f"{attrs['State']['Status']}; its command must stay up, e.g. "
                             "`sleep infinity`)")

    def _build_user(self, attrs: dict, opts: Options) -> tuple[str, Probe]:
        """Who builds (`user=`, else the workdir's owner) and what the container offers."""
        workdir = _workdir(opts, attrs)
        key = ("probe", attrs["Id"], workdir, opts.user)
        cached = self._cache.get(key)
        if cached and time.monotonic() - cached[0] < CACHE_TTL:
            probe = cached[1]
        else:
            code, out, err = self._exec(attrs, ["sh", "-c", PROBE, "sh", workdir],
                                        opts.user or "")
            found = dict(line.partition("=")[::2]
                         for line in out.decode("utf-8", "replace").splitlines())
            if "make" not in found:  # the shell did not even run (the daemon's reason may
                said = (out + err).decode("utf-8", "replace").strip()  # come unframed)
                hint = f"; is there a user {opts.user} in it?" if opts.user else ""
                raise makefile.MakefileError(f"cannot run sh in it (exit status {code}{hint})"
                                             + (f": {said}" if said else ""))
            probe = Probe(leader=found.get("leader") == "1", owner=found.get("owner", ""),
                          make=bool(found.get("make")), setsid=bool(found.get("setsid")))
            if not probe.owner:
                raise makefile.MakefileError(f"workdir {workdir} does not exist (workdir=)")
            self._cache[key] = (time.monotonic(), probe)
        return (opts.user or probe.owner), probe  # type: ignore[union-attr]

    def _exec(self, attrs: dict, cmd: list[str], user: str,
              env: dict | None = None) -> tuple[int, bytes, bytes]:
        """Run a short command in the container: (exit code, stdout, stderr)."""
        api = ENGINE.api()
        with docker_api(attrs["Name"].lstrip("/")):
            exec_id = api.exec_create(attrs["Id"], cmd, stdout=True, stderr=True, user=user,
                                      environment=env)["Id"]
            out, err = api.exec_start(exec_id, demux=True)
            code = api.exec_inspect(exec_id)["ExitCode"]
        return code, out or b"", err or b""

    # --- following a run -------------------------------------------------------------------
    def _pump(self, run: DockerRun, stream) -> None:
        """Copy the exec's output into the run's log; the first line gives make's group."""
        head = b""
        try:
            for chunk in stream:
                if run.pgid is None and head is not None:
                    head += chunk
                    m = _PGID_LINE.search(head)
                    if m is None and len(head) < PGID_SEARCH:
                        continue
                    chunk, head = (head[:m.start()] + head[m.end():] if m else head), None
                    if m:
                        self._got_pgid(run, int(m[1]))
                if chunk:
                    run.log.append(chunk)
            if head:
                run.log.append(head)
        except Exception as exc:
            log.warning("run %s: output stream broke: %s", run.id, _short(exc))
        finally:
            run.pumped.set()

    def _got_pgid(self, run: DockerRun, pgid: int) -> None:
        run.pgid = pgid
        if run.end_state is not None:  # cancelled before make had started
            self._signal(run, "TERM")

    def _watch(self, run: DockerRun, stream) -> None:
        """Enforce the time limit and the kill grace, notice make's end, and record it."""
        deadline = time.monotonic() + run.timeout
        next_check = time.monotonic() + EXEC_CHECK
        unreachable_since: float | None = None
        broken = False
        try:
            while True:
                if broken:
                    time.sleep(POLL)  # the stream is over but make runs on: poll its exec
                ended = run.pumped.wait(POLL)
                now = time.monotonic()
                if now >= deadline and run.end_state is None:
                    self._stop(run, "failed", f"timed out after {run.timeout:g} s")
                if run.kill_at is not None and now >= run.kill_at:
                    run.kill_at = None
                    log.warning("run %s: still running %gs after SIGTERM; SIGKILL", run.id,
                                run.kill_grace)
                    self._signal(run, "KILL")
                if not ended and now < next_check:
                    continue
                next_check = now + EXEC_CHECK
                try:
                    with docker_api(run.container):
                        info = ENGINE.api().exec_inspect(run.exec_id)
                    unreachable_since = None
                except DockerProblem as exc:
                    if exc.missing:
                        return self._finish(run, None, "lost", f"container {run.container} was "
                                                               "removed during the build")
                    unreachable_since = unreachable_since or now
                    if now - unreachable_since > DAEMON_PATIENCE:
                        return self._finish(run, None, "lost", str(exc))
                    continue
                if not info["Running"]:
                    break
                if ended and not broken:
                    broken = True
                    run.log.append(b"\n*** maketrigger: the output stream broke; the rest of "
                                   b"make's output is lost\n", force=True)
            progress = None  # make ended; its output may still be coming, or being read
            first_line_by = time.monotonic() + FIRST_LINE_PATIENCE
            while not run.pumped.wait(LINGER) and (run.log.progress() != progress or (
                    run.pgid is None and time.monotonic() < first_line_by)):
                progress = run.log.progress()
            # (no progress for LINGER: what make started may hold the stream open; close it.
            # Not before the first line was read, though: on a loaded machine the pump may not
            # have read anything yet, and closing then made a finished make "did not start".)
        except Exception as exc:
            log.exception("run %s: lost track of the exec", run.id)
            return self._finish(run, None, "lost", f"the controller lost track of the build: "
                                                   f"{exc}")
        finally:
            with contextlib.suppress(Exception):
                stream.close()
        run.pumped.wait(UNREAD_PATIENCE + 5)  # the pump may wait for the reader that long
        self._cleanup(run)
        self._finish(run, info.get("ExitCode"))

    def _stop(self, run: DockerRun, state: str, reason: str) -> None:
        """SIGTERM make's process group in the container; the watcher sends SIGKILL later."""
        if run.state != "running" or run.end_state is not None:
            return
        run.end_state, run.end_reason = state, reason
        run.kill_at = time.monotonic() + run.kill_grace
        if run.pgid is not None:
            self._signal(run, "TERM")

    def _signal(self, run: DockerRun, sig: str) -> None:
        if run.pgid is None:
            return
        try:
            self._exec_as_root(run, ["sh", "-c", SIGNAL, "sh", sig, str(run.pgid)])
        except DockerProblem as exc:
            log.warning("run %s: cannot send SIG%s to make: %s", run.id, sig, exc)

    def _cleanup(self, run: DockerRun) -> None:
        """End what make left in its group, and remove the pid file."""
        try:
            self._exec_as_root(run, ["sh", "-c", CLEANUP, "sh", run.pidfile,
                                     str(run.pgid or "")])
        except DockerProblem as exc:
            log.info("run %s: no cleanup in %s: %s", run.id, run.container, exc)

    def _exec_as_root(self, run: DockerRun, cmd: list[str]) -> bytes:
        api = ENGINE.api()
        with docker_api(run.container):
            exec_id = api.exec_create(run.container_id, cmd, stdout=True, stderr=True,
                                      user="0")["Id"]
            return api.exec_start(exec_id)

    def _finish(self, run: DockerRun, code: int | None, state: str | None = None,
                error: str | None = None) -> None:
        """Record how the run ended: `state` if given (lost), else from make's exit status and
        what stopped it (cancel, time limit)."""
        if run.state != "running":
            return
        if state is None:
            if run.end_state is not None:
                state, error = run.end_state, run.end_reason
                if code is not None and code < 128:  # make's own status, not a signal's
                    run.exit_code = code
            elif run.pgid is None:
                state, error = "failed", f"make did not start in container {run.container}"
            else:
                run.exit_code = code
                if code != 0:
                    state, error = "failed", f"make ended with {_describe_exit(code)}"
                else:
                    state = "succeeded"
        if state != "succeeded":
            run.log.append(f"*** maketrigger: {state}: {error}\n".encode(), force=True)
        run.error, run.finished_at = error, time.time()
        run.state = state
        run.log.close()
        with self._lock:
            if self._busy.get(run.container_id) == run.id:
                del self._busy[run.container_id]
        log.info("run %s: %s (%s)", run.id, state, error or "ok")

    # --- what the dispatcher asks ------------------------------------------------------------
    def get_run(self, worker: Worker, run_id: str) -> dict:
        return self._run(worker, run_id).record()

    def cancel_run(self, worker: Worker, run_id: str) -> dict:
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            raise RunUnknown(f"no run {run_id} in {container_name(worker)}")
        self._stop(run, "cancelled", "cancelled on request")
        return run.record()

    def stream_log(self, worker: Worker, run_id: str, offset: int,
                   follow: bool = True) -> Iterator[bytes]:
        """The run's output from `offset`; returns at its end, or after QUIET seconds without
        output (the dispatcher then asks get_run and listens again)."""
        run = self._run(worker, run_id)
        quiet_until = time.monotonic() + QUIET
        while True:
            try:
                data = run.log.read(offset, CHUNK)
            except ValueError as exc:
                raise WorkerError(f"run {run_id}: {exc}") from None
            if data:
                yield data
                offset += len(data)
                quiet_until = time.monotonic() + QUIET
                continue
            if run.log.closed or not follow or time.monotonic() >= quiet_until:
                return
            if worker.gone:
                raise WorkerError(f"{worker.url} is gone", gone=True)
            run.log.wait(offset, 0.5)

    def _run(self, worker: Worker, run_id: str) -> DockerRun:
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            self._orphan(worker, run_id)  # raises
        return run  # type: ignore[return-value]

    def _orphan(self, worker: Worker, run_id: str) -> None:
        """A run this process does not know (the controller restarted): stop what is left of it
        in the container, and say whether it had started (WorkerError `gone`: the job is lost)
        or not (RunUnknown: it may be dispatched again)."""
        name = container_name(worker)
        if not RUN_ID_RE.fullmatch(run_id):
            raise RunUnknown(f"no run {run_id} in {name}")
        pidfile = f"/tmp/maketrigger-{run_id}.pid"
        try:
            attrs = self._inspect(name)
            if not attrs["State"]["Running"]:
                raise WorkerError(f"container {name} is {attrs['State']['Status']}: the build "
                                  f"of run {run_id}, if it started, ended with it", gone=True)
            running = self._orphan_execs(attrs, pidfile)
            deadline = time.monotonic() + (2.0 if running else 0.0)
            while True:
                pgid = self._read_pidfile(attrs, pidfile)
                if pgid or time.monotonic() >= deadline:
                    break
                time.sleep(0.1)
        except DockerProblem as exc:
            raise WorkerError(f"cannot look for run {run_id} in {name}: {exc}",
                              gone=exc.missing) from None
        if not pgid and not running:
            raise RunUnknown(f"no run {run_id} in {name}")
        stopped = ""
        if running and pgid:
            opts = parse_entry(worker.configured)
            run = DockerRun(id=run_id, target="", vars={}, container=name,
                            container_id=attrs["Id"], pidfile=pidfile, timeout=0,
                            kill_grace=opts.kill_grace, pgid=pgid)
            log.warning("run %s: stopping the build a previous controller left in %s", run_id,
                        name)
            self._signal(run, "TERM")
            deadline = time.monotonic() + opts.kill_grace
            while self._orphan_execs(attrs, pidfile) and time.monotonic() < deadline:
                time.sleep(0.2)
            self._cleanup(run)
            stopped = "; the build it left running was stopped"
        elif pgid:
            with contextlib.suppress(DockerProblem):
                self._exec_as_root(DockerRun(id=run_id, target="", vars={}, container=name,
                                             container_id=attrs["Id"], pidfile=pidfile,
                                             timeout=0, kill_grace=0),
                                   ["rm", "-f", "--", pidfile])
            stopped = "; the build had ended, its result and the rest of its log are lost"
        raise WorkerError(f"the controller restarted during the build in {name}{stopped}",
                          gone=True)

    def _orphan_execs(self, attrs: dict, pidfile: str) -> bool:
        """Whether an exec of this run (its pid file among its arguments) still runs."""
        api = ENGINE.api()
        with docker_api(attrs["Name"].lstrip("/")):
            exec_ids = api.inspect_container(attrs["Id"]).get("ExecIDs") or []
            for exec_id in exec_ids:
                try:
                    info = api.exec_inspect(exec_id)
                except docker.errors.NotFound:
                    continue
                if info.get("Running") and pidfile in info["ProcessConfig"].get("arguments", []):
                    return True
        return False

    def _read_pidfile(self, attrs: dict, pidfile: str) -> int | None:
        _, out, _ = self._exec(attrs, ["sh", "-c", READ_PIDFILE, "sh", pidfile], "0")
        pid = rules.parse_natural(out.decode(errors="replace").strip(), 2**31 - 1)
        return pid if pid is not None and pid > 1 else None

    def _prune(self) -> None:
        """Keep the records of at most KEEP_RUNS finished runs."""
        with self._lock:
            ended = sorted((r for r in self._runs.values() if r.state != "running"),
                           key=lambda r: r.finished_at or 0)
            for run in ended[:max(0, len(ended) - KEEP_RUNS)]:
                del self._runs[run.id]


def _check_request(opts: Options, run_id: str, target: str, variables: dict,
                   timeout: float | None) -> tuple[str, dict, float]:
    """Everything worker/api.py enforces, with the entry's options as its settings."""
    try:
        if not RUN_ID_RE.fullmatch(run_id or ""):
            raise rules.RuleError("run id must be 1-64 letters, digits, '_', '.' or '-'")
        target = rules.check_target_syntax(target)
        variables = rules.check_vars_syntax(variables)
        rules.check_vars_allowed(variables, opts.vars, setting="the entry's vars=")
        if not rules.target_allowed(target, opts.targets):
            raise rules.RuleError(f"target {target} is not allowed by the worker's targets=")
        if timeout is not None and timeout > opts.timeout:
            raise rules.RuleError(f"timeout must be at most {opts.timeout:g} s (the worker's "
                                  "timeout=)")
    except rules.RuleError as exc:
        raise WorkerRejected(str(exc)) from None
    return target, variables, opts.timeout if timeout is None else timeout


def _workdir(opts: Options, attrs: dict) -> str:
    return opts.workdir or attrs["Config"].get("WorkingDir") or "/workspace"


def _show(worker: Worker, state: str, health: str | None) -> None:
    """What GET /workers shows of the container."""
    if isinstance(worker, DockerWorker):
        worker.state, worker.container_health = state, health
