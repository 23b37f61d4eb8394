"""The compose stack under test: the compose CLI as a user runs it, the Docker SDK to look inside.

This is the only module of the end-to-end tests that talks to Docker. One `Stack` is one compose
project with its own name, images, workspace, port and volumes, so that `down()` removes
exactly what it made.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import docker.errors
import requests

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


class StackError(AssertionError):
    """The stack did not do what a user would expect of it (fails the test that asked)."""


def compose_command() -> list[str]:
    """`$COMPOSE`, else Compose v1's `docker-compose`, else the `docker compose` plugin."""
    if os.environ.get("COMPOSE"):
        return shlex.split(os.environ["COMPOSE"])
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
    if probe.returncode == 0:
        return ["docker", "compose"]
    raise StackError("neither docker-compose nor `docker compose` is installed "
                     "(scripts/ci-docker.sh installs Compose v1)")


def wait_until(what: str, check: Callable[[], object], timeout: float, interval: float = 0.5):
    """Poll `check` until it returns something true; return it, or fail saying `what`."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except (requests.RequestException, docker.errors.APIError, KeyError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout:g} s waiting for {what}"
                             + (f" (last error: {last_error})" if last_error else ""))
        time.sleep(interval)


class Stack:
    """One compose project of docker-compose.yml, driven like a user would drive it."""

    def __init__(self, client: docker.DockerClient, project: str, env: dict[str, str],
                 workdir: Path):
        self.client = client
        self.project = project
        self.base_env = dict(env)
        self.env = dict(env)
        self.workdir = workdir
        self.url = f"http://127.0.0.1:{env['TRIGGER_PORT']}"
        # No .env of the developer's may leak in: an empty env file instead.
        self.env_file = workdir / "empty.env"
        self.env_file.write_text("")

    # --- the compose CLI ------------------------------------------------------------------
    def compose(self, *args: str, timeout: float = 300, check: bool = True,
                files: tuple[str, ...] = ("docker-compose.yml",)) -> subprocess.CompletedProcess:
        argv = [*compose_command(), "--env-file", str(self.env_file), "-p", self.project]
        for f in files:
            argv += ["-f", str(ROOT / f)]
        argv += list(args)
        env = {k: v for k, v in os.environ.items() if k not in self.base_env}
        env.update(self.env)
        log.info("$ %s", " ".join(argv))
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
        if check and done.returncode != 0:
            raise StackError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
        return done

    def up(self, *, workers: int = 1, **settings: str) -> None:
        """`compose up -d` with these settings (the others back to the test defaults), then wait
        until the controller sees `workers` healthy workers."""
        self.env = {**self.base_env, **settings}
        self.compose("up", "-d", "--scale", f"worker={workers}")
        self.wait_healthy(workers)

    def down(self) -> None:
        """Remove the project's containers, networks and volumes, whatever state it is in."""
        try:
            self.compose("down", "--volumes", "--remove-orphans", "--timeout", "5", check=False)
        finally:
            self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        label = f"{PROJECT_LABEL}={self.project}"
        for c in self.client.containers.list(all=True, filters={"label": label}):
            c.remove(force=True, v=True)
        for n in self.client.networks.list(filters={"label": label}):
            n.remove()
        for v in self.client.volumes.list(filters={"label": label}):
            v.remove(force=True)

    # --- containers -----------------------------------------------------------------------
    def containers(self, service: str, all: bool = False) -> list:
        filters = {"label": [f"{PROJECT_LABEL}={self.project}", f"{SERVICE_LABEL}={service}"]}
        return self.client.containers.list(all=all, filters=filters)

    def container(self, service: str):
        found = self.containers(service)
        if len(found) != 1:
            raise StackError(f"expected one running {service} container, found {len(found)}")
        return found[0]

    def health(self, container) -> str:
        container.reload()
        return container.attrs["State"].get("Health", {}).get("Status", "none")

    def wait_healthy(self, workers: int, timeout: float = 90) -> None:
        """Docker says every container is healthy and the controller sees `workers` of them."""
        def ready():
            services = [self.container("controller"), *self.containers("worker")]
            if len(services) != 1 + workers:
                return False
            if any(self.health(c) != "healthy" for c in services):
                return False
            seen = self.get("/workers").json()["workers"]
            return sum(1 for w in seen if w["healthy"]) == workers

        try:
            wait_until(f"the controller and {workers} healthy worker(s)", ready, timeout)
        except StackError as exc:
            raise StackError(f"{exc}\n{self.describe()}") from None

    def logs(self) -> str:
        done = self.compose("logs", "--no-color", "--tail", "60", check=False)
        return done.stdout + done.stderr

    def exec_python(self, service: str, code: str) -> tuple[int, str]:
        """Run Python in a running container of `service`, as its image's user."""
        result = self.container(service).exec_run(["/opt/venv/bin/python", "-c", code])
        return result.exit_code, result.output.decode(errors="replace")

    # --- the controller's API -------------------------------------------------------------
    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=kwargs.pop("timeout", 10), **kwargs)

    def post_job(self, target: str, wait: bool = False, **fields) -> requests.Response:
        return requests.post(self.url + "/jobs", json={"target": target, "wait": wait, **fields},
                             timeout=120)

    def job(self, job_id: int) -> dict:
        response = self.get(f"/jobs/{job_id}")
        response.raise_for_status()
        return response.json()

    def wait_for_job(self, job_id: int, states: tuple[str, ...] = ("succeeded", "failed",
                     "cancelled", "lost"), timeout: float = 60) -> dict:
        return wait_until(f"job {job_id} to be {'/'.join(states)}",
                          lambda: (j := self.job(job_id))["state"] in states and j, timeout,
                          interval=0.2)

    def describe(self) -> str:
        """What the tests print when something is off: jobs, workers and recent logs."""
        try:
            jobs = json.dumps(self.get("/jobs").json(), indent=1)[:4000]
        except (requests.RequestException, ValueError) as exc:
            jobs = f"(no jobs: {exc})"
        return f"jobs: {jobs}\nlogs:\n{self.logs()}"
