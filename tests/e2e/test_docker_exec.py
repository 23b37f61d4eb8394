"""docker-compose.docker-exec.yml as a user runs it: the controller's image talks to the Docker
socket it is given (as uid 10001, through the socket's group), finds the replicas of the
make-only service in its own compose project, and builds the example site in them as the
workspace's owner. No agent runs anywhere (`--scale worker=0`)."""

from __future__ import annotations

import os
import uuid

import docker.errors
import pytest

from ..integration.procs import free_port
from .conftest import STANDIN_IMAGE, settings_documented
from .stack import Stack, wait_until

pytestmark = pytest.mark.docker

FILES = ("docker-compose.yml", "docker-compose.docker-exec.yml")


@pytest.fixture
def exec_stack(docker_client, images, workspace, tmp_path):
    """The override stack under its own project name, built toolchain image included; removed
    afterwards whatever happens."""
    socket = "/var/run/docker.sock"
    if not os.path.exists(socket):
        pytest.fail(f"{socket} is not here: the override mounts it into the controller")
    make_only = f"maketrigger-make-only:e2e-{uuid.uuid4().hex[:8]}"
    env = {name: "" for name in settings_documented()}
    env.update(images)
    env.update(WORKSPACE=str(workspace), TRIGGER_PORT=str(free_port()),
               DOCKER_GID=str(os.stat(socket).st_gid), DOCKER_EXEC_IMAGE=make_only,
               DOCKER_EXEC_BASE_IMAGE=os.environ.get("E2E_BASE_IMAGE") or STANDIN_IMAGE)
    stack = Stack(docker_client, f"mtdx{uuid.uuid4().hex[:8]}", env, tmp_path)
    try:
        yield stack
    finally:
        try:
            stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "2",
                          files=FILES, check=False)
        finally:
            stack.down()
            try:
                docker_client.images.remove(make_only, force=True)
            except docker.errors.ImageNotFound:
                pass


def test_the_controller_builds_in_every_replica_of_a_make_only_service(exec_stack,
                                                                      workspace,
                                                                      workspace_owner):
    stack = exec_stack
    stack.compose("up", "-d", "--scale", "worker=0", "--scale", "rbuilder=2", files=FILES,
                  timeout=900)

    shown = wait_until("two healthy docker:// workers",
                       lambda: len(w := [x for x in stack.get("/workers").json()["workers"]
                                         if x["healthy"]]) == 2 and w, 90)
    assert {w["name"] for w in shown} == {"rbuilder"}
    assert all(w["container"].startswith(stack.project) for w in shown), shown
    assert not stack.containers("worker")
    for container in stack.containers("rbuilder"):
        assert container.exec_run(["sh", "-c", "command -v trigger-worker"]).exit_code != 0

    site = stack.post_job("site", wait=True)
    assert site.status_code == 200, f"{site.text}\n{stack.describe()}"
    index = workspace / "public" / "index.html"
    assert (index.stat().st_uid, index.stat().st_gid) == workspace_owner

    ids = [stack.post_job(t).json()["id"] for t in ("check-titles", "check-links")]
    jobs = [stack.wait_for_job(job_id, timeout=90) for job_id in ids]
    assert [j["state"] for j in jobs] == ["succeeded"] * 2, stack.describe()
    assert {j["worker"] for j in jobs} == {w["url"] for w in shown}
