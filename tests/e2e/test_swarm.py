"""docker-compose.yml with docker-stack.yml under `docker stack deploy`, on a one-node swarm made
for the test (and left again at the session's end, unless the engine was in a swarm already):
the workers are found through the service name, the tokens are Swarm secrets, a build runs, and
scaling adds workers that the controller uses."""

from __future__ import annotations

import os
import secrets
import subprocess
import uuid

import pytest
import requests

from ..integration.procs import free_port
from .conftest import settings_documented
from .stack import ROOT, StackError, wait_until

STACK_LABEL = "com.docker.stack.namespace"


def docker_cli(*args: str, env: dict | None = None, check: bool = True,
               timeout: float = 180) -> subprocess.CompletedProcess:
    done = subprocess.run(["docker", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and done.returncode != 0:
        raise StackError(f"docker {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


@pytest.fixture(scope="session")
def swarm(docker_client):
    """A one-node swarm on 127.0.0.1, left at the end of the whole session if this fixture made
    it: with Docker 20.10, leaving a swarm breaks name resolution in the containers then running
    on bridge networks (the compose tests' controller no longer finds its worker), so it waits
    until every other test is done."""
    state = docker_client.info()["Swarm"]["LocalNodeState"]
    made = state != "active"
    if made:
        docker_cli("swarm", "init", "--advertise-addr", "127.0.0.1")
    try:
        yield
    finally:
        if made:
            docker_cli("swarm", "leave", "--force", check=False)
            # `swarm init` made this bridge for the tasks' outside traffic; it goes too.
            docker_cli("network", "rm", "docker_gwbridge", check=False)


@pytest.fixture
def deployed(docker_client, swarm, images, workspace, tmp_path):
    name = f"mtswarm{uuid.uuid4().hex[:6]}"
    folder = tmp_path / "secrets"
    folder.mkdir(mode=0o700)
    for secret in ("worker_token", "api_token"):
        (folder / secret).write_text(secrets.token_urlsafe(32) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in settings_documented()}
    env.update(images, WORKSPACE=str(workspace), TRIGGER_PORT=str(free_port()),
               SWARM_SECRETS_DIR=str(folder))
    try:
        docker_cli("stack", "deploy", "--resolve-image", "never", "-c", "docker-compose.yml",
                   "-c", "docker-stack.yml", name, env=env)
        yield {"name": name, "url": f"http://127.0.0.1:{env['TRIGGER_PORT']}",
               "api_token": (folder / "api_token").read_text().strip()}
    finally:
        docker_cli("stack", "rm", name, check=False)
        label = f"{STACK_LABEL}={name}"

        def gone():
            return not (docker_client.containers.list(all=True, filters={"label": label})
                        or docker_client.networks.list(filters={"label": label}))
        wait_until(f"stack {name} to be removed", gone, timeout=120)
        for volume in docker_client.volumes.list(filters={"label": label}):
            volume.remove(force=True)


def test_the_stack_runs_builds_under_swarm_and_scales(deployed):
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {deployed['api_token']}"
    url = deployed["url"]

    def healthy() -> int:
        workers = http.get(f"{url}/workers", timeout=10).json()["workers"]
        return sum(w["healthy"] for w in workers)

    wait_until("two healthy workers", lambda: healthy() == 2, timeout=180)
    # Swarm publishes on every interface: the API token (a secret) is what guards it.
    assert requests.get(f"{url}/workers", timeout=10).status_code == 401

    answer = http.post(f"{url}/jobs", json={"target": "site", "wait": True}, timeout=300)
    assert answer.status_code == 200, answer.text
    job = answer.json()
    assert job["state"] == "succeeded" and job["exit_code"] == 0
    assert "tasks.worker" not in job["worker"]  # one task's own address, not the service name

    docker_cli("service", "scale", "--detach", f"{deployed['name']}_worker=3")
    wait_until("three healthy workers", lambda: healthy() == 3, timeout=180)
    done = [http.post(f"{url}/jobs", json={"target": "site", "wait": True}, timeout=300)
            for _ in range(2)]
    assert [r.json()["state"] for r in done] == ["succeeded", "succeeded"]
