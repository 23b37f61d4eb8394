"""Rows 3 and 4: `docker exec` (the CLI, and the Docker SDK's exec_run) into one long-lived
container of the stand-in image, and `docker run --rm` of a fresh container per build.

Every container made here carries the label `maketrigger-bench=<run id>` and is removed at the
end, whatever happened."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import docker
import docker.errors

from bench.common import (
    ServerProc,
    Sizes,
    children_cpu_seconds,
    cpu_seconds,
    parse_stamp,
    pids_named,
    pooled,
    run_checked,
    run_quiet,
)

log = logging.getLogger(__name__)
IMAGE = os.environ.get("STANDIN_IMAGE", "maketrigger-base:bookworm")
LABEL = "maketrigger-bench"
MOUNT = "/w"


def docker_cli() -> str:
    return os.environ.get("DOCKER", "docker")


def ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def daemons() -> list[ServerProc]:
    """dockerd and containerd, which every docker row goes through."""
    return [ServerProc(name, "daemon", pid) for name in ("dockerd", "containerd")
            for pid in pids_named(name)]


def daemon_cpu_parts() -> dict:
    return {p.service: (lambda pid=p.pid: cpu_seconds(pid)) for p in daemons()}


def make_args(target: str, mode: str = "identical", i: int = 0) -> list[str]:
    return ["make", "-C", MOUNT, *([f"N={i}"] if mode == "distinct" else []), target]


class LongLived:
    """One container of the stand-in image that sleeps, with the workspace at /w."""

    def __init__(self, workspace: Path, run_id: str):
        self.ws, self.run_id = str(workspace), run_id
        self.client = docker.from_env(timeout=120)
        self.container = None

    def __enter__(self) -> LongLived:
        self.container = self.client.containers.run(
            IMAGE, ["sleep", "infinity"], detach=True, name=f"mtbench-{self.run_id}-exec",
            labels={LABEL: self.run_id}, volumes={self.ws: {"bind": MOUNT, "mode": "rw"}})
        self.container.reload()
        self.init_pid = self.container.attrs["State"]["Pid"]
        self.shim_pid = ppid(self.init_pid)
        return self

    def __exit__(self, *exc) -> None:
        remove_labelled(self.client, self.run_id)
        self.client.close()

    def processes(self) -> list[ServerProc]:
        return [*daemons(), ServerProc("containerd-shim", "daemon", self.shim_pid)]

    def cpu_parts(self) -> dict:
        # The shim reaps runc and, as the container's subreaper, each exec'd make: its
        # children's time holds both. The container's cgroup would count make (and part of
        # runc) a second time, so it is not added.
        return {**daemon_cpu_parts(),
                "containerd-shim (with runc and the exec'd make)":
                    lambda: cpu_seconds(self.shim_pid)}


def remove_labelled(client: docker.DockerClient, run_id: str) -> None:
    for c in client.containers.list(all=True, filters={"label": f"{LABEL}={run_id}"}):
        try:
            c.remove(force=True)
        except docker.errors.NotFound:
            pass


class DockerExecCli:
    name, label, kind = "docker-exec-cli", "docker exec (CLI)", "sync"

    def __init__(self, box: LongLived, sizes: Sizes):
        self.box = box
        self.rt_count, self.stamp_count = sizes.docker_rt, sizes.docker_stamp
        self.load_count = sizes.cmd_load

    def argv(self, target: str, mode: str = "identical", i: int = 0) -> list[str]:
        return [docker_cli(), "exec", self.box.container.name, *make_args(target, mode, i)]

    def roundtrip(self, i: int) -> None:
        run_quiet(self.argv("noop"))

    def stamp(self, i: int) -> float:
        sent = time.time_ns()
        return (parse_stamp(run_checked(self.argv("stamp"))) - sent) / 1e9

    def load(self, mode: str, count: int, concurrency: int, seconds: float, raw: Path) -> dict:
        return pooled(lambda i: run_quiet(self.argv("noop", mode, i)), count, concurrency,
                      seconds)

    def processes(self) -> list[ServerProc]:
        return self.box.processes()

    def cpu_parts(self) -> dict:
        return {**self.box.cpu_parts(), "docker CLI (the client's children)": children_cpu_seconds}


class DockerExecSdk:
    name, label, kind = "docker-exec-sdk", "Docker SDK exec_run", "sync"

    def __init__(self, box: LongLived, sizes: Sizes):
        self.box = box
        self.rt_count, self.stamp_count = sizes.docker_rt, sizes.docker_stamp
        self.load_count = sizes.cmd_load
        self._local = threading.local()

    def _container(self):
        """A client per thread (the SDK's HTTP session is not meant to be shared)."""
        if getattr(self._local, "container", None) is None:
            client = docker.from_env(timeout=120)
            self._local.container = client.containers.get(self.box.container.id)
        return self._local.container

    def _exec(self, args: list[str]) -> bytes:
        result = self._container().exec_run(args)
        if result.exit_code != 0:
            raise RuntimeError(f"exit {result.exit_code}: {result.output[-200:]!r}")
        return result.output

    def roundtrip(self, i: int) -> None:
        self._exec(make_args("noop"))

    def stamp(self, i: int) -> float:
        sent = time.time_ns()
        return (parse_stamp(self._exec(make_args("stamp"))) - sent) / 1e9

    def load(self, mode: str, count: int, concurrency: int, seconds: float, raw: Path) -> dict:
        return pooled(lambda i: self._exec(make_args("noop", mode, i)), count, concurrency,
                      seconds)

    def processes(self) -> list[ServerProc]:
        return self.box.processes()

    def cpu_parts(self) -> dict:
        return self.box.cpu_parts()


class DockerRun:
    """`docker run --rm` with the workspace mounted, as a user would type it."""
    name, label, kind = "docker-run", "docker run --rm", "sync"

    def __init__(self, workspace: Path, sizes: Sizes, run_id: str):
        self.ws, self.run_id = str(workspace), run_id
        self.rt_count, self.stamp_count = sizes.run_rt, sizes.run_stamp
        self.load_count = sizes.run_load

    def __enter__(self) -> DockerRun:
        return self

    def __exit__(self, *exc) -> None:
        client = docker.from_env(timeout=120)
        try:
            remove_labelled(client, self.run_id)
        finally:
            client.close()

    def argv(self, target: str, mode: str = "identical", i: int = 0) -> list[str]:
        return [docker_cli(), "run", "--rm", "--label", f"{LABEL}={self.run_id}",
                "-v", f"{self.ws}:{MOUNT}", IMAGE, *make_args(target, mode, i)]

    def roundtrip(self, i: int) -> None:
        run_quiet(self.argv("noop"))

    def stamp(self, i: int) -> float:
        sent = time.time_ns()
        return (parse_stamp(run_checked(self.argv("stamp"))) - sent) / 1e9

    def load(self, mode: str, count: int, concurrency: int, seconds: float, raw: Path) -> dict:
        return pooled(lambda i: run_quiet(self.argv("noop", mode, i), timeout=120), count,
                      concurrency, seconds)

    def processes(self) -> list[ServerProc]:
        return daemons()

    def cpu_parts(self) -> dict:
        # The containers' shims and cgroups are gone when they end: only the machine-wide
        # figure counts them.
        return {**daemon_cpu_parts(), "docker CLI (the client's children)": children_cpu_seconds}


class RelayContainers:
    """The bare two-hop relay (bench/relay_app.py) as two containers of the worker image on a
    network of their own, the client on the front one's published 127.0.0.1 port and the front
    one reaching the back one by name: the floor of maketrigger's design as the compose stack
    runs it (Docker's userland proxy and bridge included). Round trips only, for the side-by-side
    turns; the back one runs make as the workspace's owner, as the worker does."""
    name = "relay-compose"
    label = "bare two-hop Flask relay (containers)"

    def __init__(self, workspace: Path, run_id: str, image: str, raw: Path):
        self.ws, self.run_id, self.image, self.raw = str(workspace), f"{run_id}-relay", image, raw
        self.client = docker.from_env(timeout=120)
        self.network = None
        self.containers: dict = {}
        self.http = None

    def _start(self, role: str, app: str, keepalive: int, **kw):
        bench = str(Path(__file__).resolve().parent)
        self.containers[role] = self.client.containers.run(
            self.image, ["-m", "gunicorn", "-c", "python:bench.relay_conf", "--keep-alive",
                         str(keepalive), "--bind", "0.0.0.0:8000", app],
            entrypoint="/opt/venv/bin/python", detach=True, labels={LABEL: self.run_id},
            name=f"mtbench-{self.run_id}-{role}", network=self.network.name,
            environment={"PYTHONPATH": "/opt/relay"}, working_dir="/opt/relay",
            volumes={bench: {"bind": "/opt/relay/bench", "mode": "ro"},
                     self.ws: {"bind": "/workspace", "mode": "rw"}}, **kw)
        return self.containers[role]

    def __enter__(self) -> RelayContainers:
        from bench import httpload
        from bench.rows_local import free_port

        try:
            self.network = self.client.networks.create(f"mtbench-{self.run_id}",
                                                       labels={LABEL: self.run_id})
            owner = os.stat(self.ws)
            back = self._start("back", "bench.relay_app:back('/workspace')", 75,
                               user=f"{owner.st_uid}:{owner.st_gid}")
            self.port = free_port()
            self._start("front", f"bench.relay_app:front('{back.name}:8000')", 5,
                        ports={"8000/tcp": ("127.0.0.1", self.port)})
            deadline = time.monotonic() + 60
            while True:
                self.http = httpload.Client(self.port, timeout=10)
                try:
                    self.roundtrip(0)
                    break
                except Exception as exc:  # not listening yet: refused, reset, ...
                    self.http.close()
                    for role, container in self.containers.items():
                        container.reload()
                        if container.status != "running":
                            raise RuntimeError(f"the relay's {role} container is "
                                               f"{container.status}") from None
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the relay containers did not answer: {exc}") from None
                    time.sleep(0.3)
            self.http.close()  # measured with the usual timeout
            self.http = httpload.Client(self.port)
            return self
        except BaseException:
            self.__exit__()
            raise

    def roundtrip(self, i: int) -> None:
        status, raw = self.http.request("POST", "/jobs", {"target": "noop"})
        if status != 200 or b'"exit_code":0' not in raw.replace(b" ", b""):
            raise RuntimeError(f"HTTP {status}: {raw[:150]!r}")

    def __exit__(self, *exc) -> None:
        """Everything removed, whatever fails on the way: failures are logged, not raised."""
        if self.http is not None:
            self.http.close()
        for role, container in self.containers.items():
            try:
                (self.raw / f"relay-compose-{role}.log").write_bytes(container.logs())
            except Exception:
                log.warning("could not save the relay %s container's log", role, exc_info=True)
        try:
            remove_labelled(self.client, self.run_id)
        except Exception:
            log.warning("could not remove the relay containers", exc_info=True)
        if self.network is not None:
            try:
                self.network.remove()
            except Exception:
                log.warning("could not remove network %s", self.network.name, exc_info=True)
        self.client.close()
