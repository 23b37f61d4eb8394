"""Workers that are plain containers: the `docker://` entry, the containers it names, and the
Docker errors as one readable message. Their builds (docker exec) are docker_runs.py's.

These two are the only modules that use the Docker SDK; workers.py imports them only when
TRIGGER_WORKERS has a `docker://` entry, so a controller without one never loads the SDK.

    docker://NAME[?workdir=/w&user=1000:1000&start=auto|never&project=P&timeout=S&kill_grace=S
                  &targets=GLOB&targets=GLOB&vars=NAME&vars=NAME]

NAME is a compose service (its containers in the controller's own compose project, or in
`project`; `--scale` gives several) or else a container name: one worker per container, one
build per container at a time. The container needs `make` and a POSIX shell, nothing of ours.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import docker
import docker.errors
import requests

from worker import rules

from .workers import (
    DOCKER_SCHEME,
    Worker,
    _root_cause,
    _short,
)

log = logging.getLogger(__name__)

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
API_TIMEOUT = 30  # seconds for one Docker API call (the output stream has none)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?")

# --- the entry -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Options:
    """One `docker://` entry of TRIGGER_WORKERS."""

    name: str
    workdir: str | None = None  # None: the container's working directory, else /workspace
    user: str | None = None  # None: the owner of the workdir
    start: str = "auto"
    project: str | None = None
    timeout: float = 3600.0
    kill_grace: float = 10.0
    targets: tuple[str, ...] = ()
    vars: tuple[str, ...] = ()


@functools.lru_cache(maxsize=256)
def parse_entry(entry: str) -> Options:
    """The options of a `docker://` entry; ValueError naming what is wrong."""
    parts = urlsplit(entry)
    if (parts.scheme != "docker" or not _NAME_RE.fullmatch(parts.netloc)
            or parts.path not in ("", "/") or parts.fragment):
        raise ValueError(f"worker {entry!r} must be docker://NAME[?option=value&...], NAME a "
                         "container or compose service name")
    query = parse_qs(parts.query, keep_blank_values=True)
    known = [f.name for f in Options.__dataclass_fields__.values() if f.name != "name"]
    unknown = sorted(set(query) - set(known))
    if unknown:
        raise ValueError(f"worker {entry!r}: unknown option {', '.join(unknown)} "
                         f"(known: {', '.join(known)})")

    def one(key: str) -> str | None:
        values = query.get(key)
        if values and len(values) > 1:
            raise ValueError(f"worker {entry!r}: {key} given twice")
        return values[0] if values else None

    def seconds(key: str, default: float) -> float:
        raw = one(key)
        try:
            value = float(raw) if raw else default
        except ValueError:
            raise ValueError(f"worker {entry!r}: {key} must be a number of seconds") from None
        if value <= 0:
            raise ValueError(f"worker {entry!r}: {key} must be positive")
        return value

    workdir, user, start = one("workdir"), one("user"), one("start") or "auto"
    if workdir is not None and (not workdir.startswith("/") or "\0" in workdir):
        raise ValueError(f"worker {entry!r}: workdir must be an absolute path")
    if user is not None and not _USER_RE.fullmatch(user):
        raise ValueError(f"worker {entry!r}: user must be NAME or UID, optionally :GROUP")
    if start not in ("auto", "never"):
        raise ValueError(f"worker {entry!r}: start must be auto or never")
    project = one("project")
    if project is not None and not _NAME_RE.fullmatch(project):
        raise ValueError(f"worker {entry!r}: project is not a compose project name")
    try:
        allowed_vars = tuple(rules.check_var_name(v) for v in query.get("vars", []))
    except rules.RuleError as exc:
        raise ValueError(f"worker {entry!r}: {exc}") from None
    return Options(name=parts.netloc, workdir=workdir, user=user, start=start, project=project,
                   timeout=seconds("timeout", 3600.0), kill_grace=seconds("kill_grace", 10.0),
                   targets=tuple(query.get("targets", [])), vars=allowed_vars)


def container_name(worker: Worker) -> str:
    return worker.url[len(DOCKER_SCHEME):]


@dataclass
class DockerWorker(Worker):
    """A worker that is one container: `name` is the entry's name, `container` its own."""

    container: str = ""
    state: str = "unknown"  # Docker's State.Status, or "missing" / "unreachable"
    container_health: str | None = None  # the container's own HEALTHCHECK status, if any
    problem: str | None = None  # why it fails its jobs


    def matches(self, selector: str | None) -> bool:
        return super().matches(selector) or (selector is not None and selector == self.container)

    def to_dict(self) -> dict:
        d = super().to_dict()
        if self.fails_jobs:  # dispatchable only to fail its jobs with the reason
            d.update(healthy=False, last_error=self.problem)
        d.update(container=self.container, state=self.state, health=self.container_health)
        return d


# --- errors: the one boundary ------------------------------------------------------------------
class DockerProblem(Exception):
    """A Docker API call failed; `missing`: the container (or exec) does not exist."""

    def __init__(self, message: str, *, missing: bool = False):
        super().__init__(message)
        self.missing = missing


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _problem(exc: BaseException, container: str | None) -> DockerProblem:
    """A readable DockerProblem for any error of the SDK or of the connection under it."""
    if isinstance(exc, docker.errors.NotFound):
        if container:
            return DockerProblem(f"no container or compose service named {container!r}",
                                 missing=True)
        return DockerProblem(f"not found: {exc.explanation or exc}", missing=True)
    if isinstance(exc, docker.errors.APIError):
        where = f" (container {container})" if container else ""
        return DockerProblem(f"the Docker daemon refused{where}: {exc.explanation or exc}")
    root, host = _os_cause(exc), docker_host()
    if isinstance(root, PermissionError):
        return DockerProblem(
            f"permission denied on the Docker socket ({host}): the controller's user needs the "
            "socket's group (compose: group_add), or reach a socket proxy through DOCKER_HOST")
    if isinstance(root, FileNotFoundError):
        return DockerProblem(f"no Docker socket at {host}: mount /var/run/docker.sock into the "
                             "controller, or set DOCKER_HOST")
    if isinstance(root, ConnectionRefusedError):
        return DockerProblem(f"the Docker daemon at {host} refused the connection")
    return DockerProblem(f"cannot reach the Docker daemon at {host}: {_short(exc)}")


def _os_cause(exc: BaseException) -> BaseException | None:
    """The OSError under an SDK or requests error, wherever the wrapping put it (cause,
    context, or an argument as urllib3 does)."""
    seen, todo = set(), [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and not isinstance(current, requests.RequestException):
            return current
        todo += [e for e in (current.__cause__, current.__context__, *current.args)
                 if isinstance(e, BaseException)]
    return _root_cause(exc)


@contextlib.contextmanager
def docker_api(container: str | None = None) -> Iterator[None]:
    """Turn every Docker SDK and connection error inside into a DockerProblem."""
    try:
        yield
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        raise _problem(exc, container) from None


# --- the engine: one SDK client, discovery -------------------------------------------------------
class _Engine:
    """The SDK client (made on first use, again after a failure) and this process's project."""

    def __init__(self):
        self._lock = threading.Lock()
        self._client: docker.DockerClient | None = None
        self._project: str | None = None
        self._project_known = False
        self.found: dict[str, bool] = {}  # entry -> whether its last lookup found containers

    def api(self) -> docker.APIClient:
        with self._lock:
            if self._client is None:
                with docker_api():
                    self._client = docker.from_env(timeout=API_TIMEOUT, max_pool_size=32)
            return self._client.api

    def own_project(self) -> str | None:
        """The compose project of the container this controller runs in (None outside one)."""
        if self._project_known:
            return self._project
        api = self.api()
        for ref in _own_container_refs():
            try:
                with docker_api():
                    attrs = api.inspect_container(ref)
            except DockerProblem as exc:
                if exc.missing:
                    continue
                raise
            if ref == socket.gethostname() and attrs["Config"].get("Hostname") != ref:
                continue  # a container merely named like this host
            self._project = (attrs["Config"].get("Labels") or {}).get(PROJECT_LABEL)
            break
        self._project_known = True
        if self._project:
            log.info("docker:// workers: services of compose project %s", self._project)
        return self._project

    def find(self, opts: Options) -> list[dict]:
        """The containers of service `opts.name` (in the project), else the one of that name."""
        api = self.api()
        project = opts.project or self.own_project()
        labels = [f"{SERVICE_LABEL}={opts.name}"]
        if project:
            labels.append(f"{PROJECT_LABEL}={project}")
        with docker_api():
            rows = api.containers(all=True, filters={"label": labels})
            if not rows:
                rows = [r for r in api.containers(all=True, filters={"name": opts.name})
                        if f"/{opts.name}" in r.get("Names", [])]
        return sorted(rows, key=lambda r: r["Names"][0])


def _own_container_refs() -> list[str]:
    """Ids this process's container may have: from the files Docker mounts, then the host name."""
    refs = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            refs += re.findall(r"/containers/([0-9a-f]{64})/(?:hostname|hosts|resolv\.conf)",
                               f.read())
    except OSError:
        pass
    return [*dict.fromkeys(refs), socket.gethostname()]


ENGINE = _Engine()


def resolve(entry: str) -> list[Worker]:
    """The workers a `docker://` entry stands for: one per container. With none (no such
    container, or no daemon to ask), one worker named after the entry, whose health says why.
    Raises ValueError for a malformed entry, OSError to keep the containers known before."""
    opts = parse_entry(entry)
    try:
        rows = ENGINE.find(opts)
    except DockerProblem as exc:
        if ENGINE.found.get(entry):
            raise OSError(str(exc)) from None
        rows = []
    ENGINE.found[entry] = bool(rows)
    if not rows:
        return [DockerWorker(url=DOCKER_SCHEME + opts.name, name=opts.name, configured=entry,
                             container=opts.name, state="missing")]
    return [DockerWorker(url=DOCKER_SCHEME + r["Names"][0].lstrip("/"), name=opts.name,
                         configured=entry, container=r["Names"][0].lstrip("/"),
                         state=r.get("State", "unknown")) for r in rows]
