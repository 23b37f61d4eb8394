"""The only module that talks HTTP to workers: discovery, health, start, follow, cancel.

`TRIGGER_WORKERS` names base URLs. A host name that resolves to several addresses (a compose
service scaled with `--scale worker=3`) is that many workers, one per distinct IPv4 address
(IPv6 only for names without one), re-resolved periodically so scaling is picked up live.

A `docker://` entry is a container without an agent, built in through the Docker API: its
discovery is `docker_workers`' and its builds `docker_runs`', both imported (with the Docker
SDK) only when such an entry is configured.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from worker import rules

from . import worker_http
from .store import StoreError

log = logging.getLogger(__name__)

_NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 5.0
HEALTH_TIMEOUT = (1.0, 2.0)  # a frozen worker shows unhealthy within a few seconds
STREAM_READ_TIMEOUT = 10.0
TARGETS_TTL = 5.0  # seconds a worker's list of targets is taken as current
# How long a trigger waits for a list of targets before it leaves the check to the worker (which
# makes it again when the job starts). Listing runs `make -p`, which takes as long as the
# makefile's $(shell ...) lines; GitHub gives up on a webhook delivery after 10 s.
TARGETS_WAIT = 3.0
TARGETS_STALE = 60.0  # an older list is not trusted even for a target it has
LIST_WAIT = 35.0  # GET /targets waits this long for a list (a listing's own limit is 30 s)
# A worker's targets, their names, and whether they may be out of date (see WorkerClient.targets).
Listed = tuple[list[dict], frozenset[str], bool]
DOCKER_SCHEME = "docker://"
MANY = 1 << 30  # room of a worker that locks only targets: it takes any number of jobs


class WorkerError(Exception):
    """A worker could not be used; `gone` means it will not come back for this run."""

    def __init__(self, message: str, *, gone: bool = False, uncertain: bool = False):
        super().__init__(message)
        self.gone = gone
        self.uncertain = uncertain  # the request may have reached the worker


class WorkerStopping(WorkerError):
    """The worker is shutting down (a 503 that says so): it takes no build, for now."""


class WorkerBusy(WorkerError):
    """The worker refused a start because its workspace or the target is locked (409)."""


class RunStarted(WorkerError):
    """The worker already has this run (a start that was retried): follow it."""


class WorkerRejected(WorkerError):
    """The worker refused a start for good (400): the message says why."""


class RunUnknown(WorkerError):
    """The worker does not know the run (404): it restarted, or never got it."""


@dataclass
class Worker:
    """One worker address. `name` is the host name from TRIGGER_WORKERS that it came from."""

    url: str
    name: str
    configured: str
    healthy: bool | None = None
    last_error: str | None = None
    lock: str = "workspace"
    job_timeout: float | None = None
    vars: frozenset[str] | None = None  # its WORKER_VARS, once it said (health checks)
    vars_setting: str = "WORKER_VARS"  # where that list is set, for messages
    checked_at: float | None = None
    gone: bool = False
    blocked_until: float = 0.0  # refused a start as busy: asked again after this (monotonic)
    # The same, of one target, for a worker that locks targets (WORKER_LOCK=target): the lock
    # that refused one target's start does not keep the worker from building the others.
    blocked_targets: dict[str, float] = field(default_factory=dict)
    watch_boot: str = ""
    watch_ack: int = 0
    jobs: dict[int, str] = field(default_factory=dict)  # job id -> target
    # Takes jobs only to fail them with `last_error` (a docker:// container that is missing);
    # chosen only when no other worker could ever take the job.
    fails_jobs: bool = False
    _streams: set = field(default_factory=set, repr=False)

    def matches(self, selector: str | None) -> bool:
        if not selector:
            return True
        return selector in (self.name, self.url, self.configured, self.configured.rstrip("/"))

    def can_take(self, target: str) -> bool:
        if self.lock == "target":
            return target not in self.jobs.values()
        return not self.jobs

    def blocked(self, target: str, now: float) -> bool:
        """Whether a start of `target` was refused as busy too recently to ask again."""
        return self.blocked_until > now or self.blocked_targets.get(target, 0.0) > now

    def block(self, target: str, until: float) -> None:
        """A start of `target` was refused as busy: the worker's lock (or the target's, if it
        locks targets) is held by something this controller did not start."""
        if self.lock == "target":
            now = time.monotonic()
            self.blocked_targets = {t: u for t, u in self.blocked_targets.items() if u > now}
            self.blocked_targets[target] = until
        else:
            self.blocked_until = until

    def unblock(self) -> None:
        self.blocked_until = 0.0
        self.blocked_targets.clear()

    def to_dict(self) -> dict:
        return {"url": self.url, "name": self.name, "healthy": bool(self.healthy),
                "busy": bool(self.jobs), "jobs": sorted(self.jobs), "lock": self.lock,
                "last_error": self.last_error}


def check_entry(configured: str):
    """The parts of a TRIGGER_WORKERS entry (None for docker://NAME); ValueError naming what
    is wrong unless it is http(s)://HOST[:PORT] or docker://NAME[?options]."""
    if configured.startswith(DOCKER_SCHEME):
        from . import docker_workers  # the Docker SDK, only when a docker:// worker is configured

        docker_workers.parse_entry(configured)
        return None
    parts = urlsplit(configured.rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or \
            parts.query or parts.fragment:
        raise ValueError(f"worker URL {configured!r} must be http(s)://HOST[:PORT] or "
                         "docker://NAME")
    try:
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
    except ValueError as exc:
        raise ValueError(f"worker URL {configured!r}: {exc}") from None
    return parts


def resolve(configured: str) -> list[Worker]:
    """The workers one configured base URL stands for; raises OSError if it cannot resolve."""
    if configured.startswith(DOCKER_SCHEME):
        from . import docker_workers  # the Docker SDK, only when a docker:// worker is configured

        return docker_workers.resolve(configured)
    parts = check_entry(configured)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    try:
        ipaddress.ip_address(host)
        addresses = [host]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            if exc.errno not in _NO_SUCH_NAME:
                raise  # a temporary failure says nothing about the workers
            infos = []
        v4 = sorted({i[4][0] for i in infos if i[0] == socket.AF_INET})
        v6 = sorted({i[4][0] for i in infos if i[0] == socket.AF_INET6})
        addresses = v4 or v6
    workers = []
    for addr in addresses:
        shown = f"[{addr}]" if ":" in addr else addr
        workers.append(Worker(url=f"{parts.scheme}://{shown}:{port}{parts.path}", name=host,
                              configured=configured))
    return workers


class WorkerClient:
    """HTTP calls to workers (trigger_server.worker_http), with timeouts and the shared token."""

    def __init__(self, token: str):
        self.http = worker_http.Connections(token)
        self._docker = None
        self._docker_lock = threading.Lock()

    @property
    def docker(self):
        """The transport of docker:// workers (trigger_server.docker_runs), made on first use."""
        with self._docker_lock:
            if self._docker is None:
                from .docker_runs import DockerTransport

                self._docker = DockerTransport()
            return self._docker

    def _call(self, method: str, worker: Worker, path: str, *, stream: bool = False,
              timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT), **kw):
        try:
            resp = self.http.request(worker.url, method, path, timeout=timeout, stream=stream,
                                     **kw)
        except worker_http.ConnectFailed as exc:
            raise WorkerError(f"cannot reach worker {worker.url}: {exc}",
                              gone=exc.refused) from None
        except worker_http.Broken as exc:  # the request may have reached the worker
            raise WorkerError(f"worker {worker.url} did not answer: {exc}",
                              uncertain=True) from None
        if resp.status_code == 401:
            if stream:
                resp.release()
            raise WorkerError(f"worker {worker.url} refused the worker token (401)")
        return resp

    @staticmethod
    def _json(resp, worker: Worker) -> dict:
        if isinstance(resp, worker_http.Stream):  # an error answer to a streamed request
            try:
                data = resp.body()
            except worker_http.Broken as exc:
                raise WorkerError(f"worker {worker.url} did not answer: {exc}") from None
            finally:
                resp.release()
            resp = worker_http.Reply(resp.status_code, resp.reason, data)
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise WorkerError(f"worker {worker.url} answered {resp.status_code} without JSON")
        if resp.status_code >= 400:
            message = str(body.get("error", resp.reason))
            if resp.status_code == 409 and body.get("reason") == "exists":
                raise RunStarted(message)
            if resp.status_code == 409:
                raise WorkerBusy(message)
            if resp.status_code == 404:
                raise RunUnknown(message)
            if 400 <= resp.status_code < 500:
                raise WorkerRejected(message)
            if resp.status_code == 503 and body.get("reason") == "stopping":
                raise WorkerStopping(f"worker {worker.url}: {message}")
            raise WorkerError(f"worker {worker.url}: {message}")
        return body

    def health(self, worker: Worker) -> dict:
        """The worker's health, handing back (`ack`) the watch requests already taken."""
        if worker.url.startswith(DOCKER_SCHEME):
            return self.docker.health(worker)
        return self._json(self._call("GET", worker, "/healthz", params={"ack": worker.watch_ack},
                                     timeout=HEALTH_TIMEOUT), worker)

    def targets(self, worker: Worker) -> tuple[list[dict], bool]:
        """The worker's targets, and whether they may be out of date (a build held its
        workspace when its makefile had changed: a target added since is not listed yet)."""
        if worker.url.startswith(DOCKER_SCHEME):
            return self.docker.targets(worker)
        body = self._json(self._call("GET", worker, "/targets",
                                     timeout=(CONNECT_TIMEOUT, 30)), worker)
        return body["targets"], body.get("stale") is True

    def start_run(self, worker: Worker, run_id: str, target: str, variables: dict,
                  timeout: float | None) -> Followed | None:
        """Start the run. Over HTTP the answer is the run itself, followed, as `follow` gives
        it (close it when done). None for docker:// workers."""
        if worker.url.startswith(DOCKER_SCHEME):
            self.docker.start_run(worker, run_id, target, variables, timeout)
            return None
        body = {"id": run_id, "target": target, "vars": variables, "timeout": timeout,
                "follow": True}
        resp = self._call("POST", worker, "/runs", body=body, stream=True,
                          timeout=(CONNECT_TIMEOUT, 30))
        if resp.status_code != 201 or not resp.content_type.startswith(worker_http.FRAMES_TYPE):
            self._json(resp, worker)  # raises for the refusals; a plain 201 is an old worker
            return None  # followed with GET /runs/<id>/log
        resp.set_timeout(STREAM_READ_TIMEOUT)
        return Followed(worker, resp)

    def get_run(self, worker: Worker, run_id: str) -> dict:
        if worker.url.startswith(DOCKER_SCHEME):
            return self.docker.get_run(worker, run_id)
        return self._json(self._call("GET", worker, f"/runs/{run_id}"), worker)

    def cancel_run(self, worker: Worker, run_id: str) -> dict:
        if worker.url.startswith(DOCKER_SCHEME):
            return self.docker.cancel_run(worker, run_id)
        return self._json(self._call("DELETE", worker, f"/runs/{run_id}"), worker)

    def follow(self, worker: Worker, run_id: str, offset: int) -> Iterator[bytes | dict]:
        """The run's log from `offset` as it grows, then (once it ended) its final state as a
        dict; ends without the dict if the stream ended early. Close it when done."""
        if worker.url.startswith(DOCKER_SCHEME):
            return self.docker.stream_log(worker, run_id, offset, True)
        resp = self._call("GET", worker, f"/runs/{run_id}/log",
                          params={"offset": offset, "follow": 1, "frames": 1}, stream=True,
                          timeout=(CONNECT_TIMEOUT, STREAM_READ_TIMEOUT))
        if resp.status_code != 200:
            self._json(resp, worker)
            raise WorkerError(f"worker {worker.url} answered {resp.status_code} to a follow")
        return Followed(worker, resp)


class Followed:
    """The run frames of one followed run, as log bytes and then the final state (a dict).
    close() gives the connection back (or drops it), whether or not it was read to the end."""

    def __init__(self, worker: Worker, resp: worker_http.Stream):
        self.worker, self.resp = worker, resp
        self.ended = False  # the end state was read
        worker._streams.add(resp)  # closed from the pool's thread if the worker goes away

    def __iter__(self) -> Iterator[bytes | dict]:
        try:
            if not self.resp.content_type.startswith(worker_http.FRAMES_TYPE):
                yield from iter(self.resp.read1, b"")  # a worker older than frames: plain log
                return
            for item in worker_http.frames(self.resp):
                self.ended = isinstance(item, dict)
                yield item
        except (worker_http.Broken, ValueError) as exc:
            if self.worker.gone:
                raise WorkerError(f"worker {self.worker.url} is gone", gone=True) from None
            raise WorkerError(f"log stream from {self.worker.url} broke: {exc}") from None

    def close(self) -> None:
        self.worker._streams.discard(self.resp)
        if self.ended:
            try:
                self.resp.body()  # the rest of the body, so that the connection is reused
            except worker_http.Broken:
                pass  # the end arrived; the connection just will not be reused
        self.resp.release()


def _root_cause(exc: BaseException) -> BaseException:
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        nxt = exc.__cause__ or exc.__context__
        if nxt is None and exc.args and isinstance(exc.args[0], BaseException):
            nxt = exc.args[0]
        if nxt is None:
            break
        exc = nxt
    return exc


def _short(exc: BaseException) -> str:
    return f"{type(_root_cause(exc)).__name__}: {_root_cause(exc)}"[:300]


def not_offered(target: str) -> str:
    return (f"target {target} is not a target the worker offers: not in its makefile, or not "
            "allowed by its WORKER_TARGETS (see GET /targets)")


class WorkerPool:
    """Every known worker, kept fresh by one background thread (resolution and health)."""

    def __init__(self, configured: list[str], client: WorkerClient, *,
                 resolve_interval: float = 2.0, health_interval: float = 2.0):
        self.configured = configured
        self.client = client
        self.resolve_interval = resolve_interval
        self.health_interval = health_interval
        self.lock = threading.RLock()
        self._workers: dict[str, Worker] = {}
        self._errors: dict[str, str] = {}
        self._stop = threading.Event()
        self._checks = ThreadPoolExecutor(max_workers=8, thread_name_prefix="health")
        self._targets_cache: dict[str | None,
                                 tuple[float, Listed]] = {}
        # Why the last listing for a selector found nothing: each worker's refusal.
        self._unlisted: dict[str | None, str] = {}
        # Listings under way, one per selector, in threads of their own: a slow makefile
        # neither holds a trigger longer than TARGETS_WAIT nor delays the health checks.
        self._listing: dict[str | None, Future] = {}
        self._lister = ThreadPoolExecutor(max_workers=2, thread_name_prefix="targets")
        self.on_change = lambda: None  # set by the dispatcher: a worker became usable
        self.on_watch = lambda worker, event: None  # set by the dispatcher: files changed

    # --- discovery -------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-resolve every configured URL; workers whose address went away are marked gone."""
        found: dict[str, Worker] = {}
        errors: dict[str, str] = {}
        unsure: set[str] = set()  # lookups that failed for now: keep what they had
        for configured in self.configured:
            try:
                resolved = resolve(configured)
            except (OSError, ValueError) as exc:
                errors[configured] = f"cannot resolve {configured}: {exc}"
                unsure.add(configured)
                continue
            if not resolved:
                errors[configured] = f"{configured}: no such host (is any worker running?)"
            for w in resolved:
                found.setdefault(w.url, w)
        with self.lock:
            for url, worker in list(self._workers.items()):
                if url not in found and worker.configured not in unsure:
                    self._drop(worker, "its address no longer resolves")
            for url, worker in found.items():
                if url not in self._workers or self._workers[url].gone:
                    log.info("worker %s (%s) appeared", url, worker.name)
                    self._workers[url] = worker
            self._errors = errors

    def _drop(self, worker: Worker, why: str) -> None:
        if not worker.gone:
            log.warning("worker %s is gone: %s", worker.url, why)
        worker.gone, worker.healthy, worker.last_error = True, False, why
        for resp in list(worker._streams):
            resp.close()  # wakes its follower at once
        if not worker.jobs:
            self._workers.pop(worker.url, None)

    def still_resolves(self, worker: Worker) -> bool:
        """Look the worker's name up again now (after an error on it)."""
        try:
            return any(w.url == worker.url for w in resolve(worker.configured))
        except (OSError, ValueError):
            return True  # the lookup failed for now: that is no proof the worker is gone

    def get(self, url: str) -> Worker:
        """The worker at `url`, or a detached one (a job that ran where nothing is now)."""
        with self.lock:
            worker = self._workers.get(url)
            if worker is None:
                host = urlsplit(url).hostname or url
                worker = Worker(url=url, name=host, configured=url)
                self._workers[url] = worker
                self._errors.pop(url, None)
            return worker

    def all(self) -> list[Worker]:
        with self.lock:
            return list(self._workers.values())

    def errors(self) -> dict[str, str]:
        with self.lock:
            return dict(self._errors)

    # --- health ----------------------------------------------------------------------------
    def check(self, worker: Worker) -> None:
        try:
            info = self.client.health(worker)
        except WorkerError as exc:
            became_bad = worker.healthy is not False
            worker.healthy, worker.last_error = False, str(exc)
            if became_bad:
                log.warning("worker %s unhealthy: %s", worker.url, exc)
        else:
            was_healthy = worker.healthy
            worker.healthy, worker.last_error = True, None
            worker.lock = info.get("lock", "workspace")
            worker.job_timeout = info.get("job_timeout")
            allowed = info.get("vars")
            worker.vars = frozenset(allowed) if isinstance(allowed, list) else None
            worker.vars_setting = info.get("vars_setting") or "WORKER_VARS"
            self._take_watch_events(worker, info.get("watch"))
            if not was_healthy:
                log.info("worker %s healthy", worker.url)
                self.on_change()
        worker.checked_at = time.time()

    def _take_watch_events(self, worker: Worker, watch: dict | None) -> None:
        """Pass on the build requests the worker's file watcher made since the last check."""
        if not watch:
            return
        if watch.get("boot") != worker.watch_boot:  # a restarted worker numbers from 1 again
            worker.watch_boot, worker.watch_ack = watch.get("boot", ""), 0
        for event in watch.get("events", []):
            if event["seq"] > worker.watch_ack:
                try:
                    self.on_watch(worker, {**event, "now": watch.get("now")})
                except StoreError as exc:  # taken again at the next check: not acknowledged
                    log.error("file change from %s not queued yet: %s", worker.url, exc)
                    return
                except Exception:  # (a request no retry can mend: acknowledged all the same)
                    log.exception("file change from %s not queued", worker.url)
                worker.watch_ack = event["seq"]

    def check_all(self) -> None:
        workers = [w for w in self.all() if not w.gone]
        for future in [self._checks.submit(self.check, w) for w in workers]:
            future.result()

    def start(self) -> None:
        self.refresh()
        self.check_all()
        threading.Thread(target=self._loop, name="worker-pool", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._lister.shutdown(wait=False, cancel_futures=True)  # a slow make -p holds no exit

    def _loop(self) -> None:
        next_resolve = next_health = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if now >= next_resolve:
                    self.refresh()
                    next_resolve = now + self.resolve_interval
                if now >= next_health:
                    self.check_all()
                    next_health = now + self.health_interval
            except Exception:
                log.exception("worker discovery failed")
            self._stop.wait(max(0.05, min(next_resolve, next_health) - time.monotonic()))

    # --- choosing ----------------------------------------------------------------------------
    def pick(self, selector: str | None, target: str) -> Worker | None:
        """An idle healthy worker for `target` (fewest jobs first), or None."""
        now = time.monotonic()
        with self.lock:
            fit = [w for w in self._workers.values()
                   if w.healthy and not w.gone and w.matches(selector)
                   and not w.blocked(target, now) and w.can_take(target)]
            if any(w.fails_jobs for w in fit) and any(
                    not w.fails_jobs and not w.gone and w.matches(selector)
                    for w in self._workers.values()):
                fit = [w for w in fit if not w.fails_jobs]  # a worker that can build it will do
            return min(fit, key=lambda w: len(w.jobs), default=None)

    def has_room(self) -> bool:
        """Whether any worker could take a job now (for some target)."""
        return self.room() > 0

    def room(self) -> int:
        """How many jobs the workers could take now; MANY if one locks only targets."""
        now = time.monotonic()
        with self.lock:
            free = [w for w in self._workers.values()
                    if w.healthy and not w.gone and w.blocked_until <= now]
            if any(w.lock == "target" for w in free):
                return MANY
            return sum(1 for w in free if not w.jobs)

    def known(self, selector: str | None) -> bool:
        """Whether any configured worker answers to `selector`."""
        if not selector:
            return True
        with self.lock:
            if any(w.matches(selector) for w in self._workers.values()):
                return True
        return selector in self.configured or selector in {
            urlsplit(c).hostname for c in self.configured}

    def max_timeout(self, selector: str | None) -> float | None:
        with self.lock:
            limits = [w.job_timeout for w in self._workers.values()
                      if w.matches(selector) and w.healthy and w.job_timeout]
        return min(limits) if limits else None

    def refuses_vars(self, selector: str | None, variables: dict) -> str | None:
        """Why a healthy worker for `selector` would refuse `variables` (its WORKER_VARS), in
        the worker's words: the job may be handed to any of them. None if all that said take
        them."""
        if not variables:
            return None
        with self.lock:
            lists = [(w.vars, w.vars_setting) for w in self._workers.values()
                     if w.matches(selector) and w.healthy and w.vars is not None]
        try:
            for allowed, setting in lists:
                rules.check_vars_allowed(variables, allowed, setting=setting)
        except rules.RuleError as exc:
            return str(exc)
        return None

    def targets(self, selector: str | None = None) -> list[dict] | None:
        """The targets a healthy matching worker lists (cached for TARGETS_TTL); None if none
        answers within LIST_WAIT."""
        listed = self._listed(selector, wait=LIST_WAIT)
        return listed[0] if listed else None

    def lacks_target(self, selector: str | None, target: str) -> str | None:
        """What is wrong if a worker answered and its makefile has no `target`; None if it has
        it, or if no list came within TARGETS_WAIT (the worker checks the target itself when it
        starts the job). A target that a list older than TARGETS_TTL (but not TARGETS_STALE) has
        is taken at once, and the list renewed meanwhile; a target it lacks waits for a new
        list, however young the one it lacks it from: it may have been added since (a makefile
        edited, then triggered at once)."""
        cached = self._targets_cache.get(selector)
        if cached and target in cached[1][1]:
            age = time.monotonic() - cached[0]
            if age < TARGETS_TTL:
                return None
            if age < TARGETS_STALE:
                self._list(selector)
                return None
        listed = self._listed(selector, wait=TARGETS_WAIT, cached=False)
        if listed is None or target in listed[1] or listed[2]:  # stale: the worker decides
            return None
        return not_offered(target)

    def offered(self, selector: str | None = None) -> frozenset[str] | None:
        """The names of the targets a healthy matching worker offers, freshly listed (waiting
        up to LIST_WAIT); None if none listed them, or its list may be out of date."""
        listed = self._listed(selector, wait=LIST_WAIT, cached=False)
        return None if listed is None or listed[2] else listed[1]

    def _listed(self, selector: str | None, wait: float, cached: bool = True) -> Listed | None:
        known = self._targets_cache.get(selector) if cached else None
        if known and time.monotonic() - known[0] < TARGETS_TTL:
            return known[1]
        future = self._list(selector)
        try:
            return future.result(timeout=wait) if future else None
        except FutureTimeout:
            log.warning("no worker listed its targets within %g s", wait)
            return None
        except Exception:  # advisory only, and logged by _listing_done
            return None

    def _list(self, selector: str | None) -> Future | None:
        """The listing under way for `selector`, started if there is none (None once the pool
        has stopped)."""
        with self.lock:
            future = self._listing.get(selector)
            if future is None:
                try:
                    future = self._lister.submit(self._fetch, selector)
                except RuntimeError:  # shut down
                    return None
                self._listing[selector] = future
                # Under the lock, so that it runs after the line above even if already done.
                future.add_done_callback(lambda f: self._listing_done(selector, f))
            return future

    def _listing_done(self, selector: str | None, future: Future) -> None:
        if not future.cancelled() and future.exception() is not None:
            log.error("listing the targets failed", exc_info=future.exception())
        with self.lock:
            if self._listing.get(selector) is future:
                del self._listing[selector]

    def _fetch(self, selector: str | None) -> Listed | None:
        self._unlisted.pop(selector, None)  # the word of a listing before this one is old news
        problems = []
        for worker in [w for w in self.all() if w.healthy and w.matches(selector)]:
            try:
                found, stale = self.client.targets(worker)
            except WorkerError as exc:
                log.warning("cannot list targets of %s: %s", worker.url, exc)
                problems.append(f"{worker.url}: {exc}"[:500])
                continue
            listed = (found, frozenset(t["name"] for t in found), stale)
            self._targets_cache[selector] = (time.monotonic(), listed)  # stale: for what it has
            return listed
        self._unlisted[selector] = "; ".join(problems[:3]) or "no healthy worker"
        return None

    def why_unlisted(self, selector: str | None = None) -> str | None:
        """What the workers said when they last failed to list their targets (a workspace
        without a makefile, a makefile make cannot read), if that is the latest word."""
        return self._unlisted.get(selector)
