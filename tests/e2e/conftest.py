"""Fixtures of the end-to-end tests: real images, a real compose project, real containers.

The session builds both images (offline, on the debootstrap stand-in base unless
E2E_BASE_IMAGE names another), brings docker-compose.yml up under a unique project name on a
temporary copy of examples/site, and always removes what it made: containers, networks,
volumes, the images, and the stand-in base if it was not there before.

Without a Docker engine these tests are skipped, except under CI=true, where they fail.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import docker.errors
import pytest

from ..integration.procs import free_port
from .stack import ROOT, Stack

log = logging.getLogger(__name__)

STANDIN_IMAGE = "maketrigger-base:bookworm"
# The owner the temporary workspace is given (as root), so "files belong to the workspace's
# owner" is not "files belong to root".
WORKSPACE_UID = 4321
WORKSPACE_GID = 4322


def settings_documented() -> list[str]:
    """Every setting .env.example documents (`#NAME=...` lines)."""
    text = (ROOT / ".env.example").read_text()
    return re.findall(r"^#?([A-Z][A-Z0-9_]*)=", text, flags=re.M)


def _run_logged(argv: list[str], logfile: Path, env: dict | None = None) -> None:
    """Run a build step, its output to `logfile`; fail with its tail if it fails."""
    started = time.monotonic()
    with open(logfile, "w") as out:
        done = subprocess.run(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, **(env or {})}, timeout=1800)
    log.info("%s: %.0f s", " ".join(argv), time.monotonic() - started)
    if done.returncode != 0:
        tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-30:])
        pytest.fail(f"{' '.join(argv)} failed ({done.returncode}):\n{tail}", pytrace=False)


@pytest.fixture(scope="session")
def images(docker_client, tmp_path_factory):
    """Both images, built by `make images` under tags of their own, removed at the end."""
    tag = f"e2e-{uuid.uuid4().hex[:8]}"
    names = {"TRIGGER_SERVER_IMAGE": f"maketrigger-server:{tag}",
             "TRIGGER_WORKER_IMAGE": f"maketrigger-worker:{tag}"}
    logs = tmp_path_factory.mktemp("build")
    base = os.environ.get("E2E_BASE_IMAGE")
    made_base = False
    try:
        if not base:
            base = STANDIN_IMAGE
            try:
                docker_client.images.get(base)
            except docker.errors.ImageNotFound:
                made_base = True
                _run_logged(["scripts/base-image.sh", "build", base], logs / "base-image.log")
        _run_logged(["make", "images", f"BASE_IMAGE={base}",
                     *(f"{k}={v}" for k, v in names.items())], logs / "images.log")
        yield names
    finally:
        for image in [*names.values(), *([base] if made_base else [])]:
            try:
                docker_client.images.remove(image, force=True)
            except docker.errors.ImageNotFound:
                pass


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    """A copy of examples/site, owned by WORKSPACE_UID when we may chown (root)."""
    path = tmp_path_factory.mktemp("e2e") / "site"
    shutil.copytree(ROOT / "examples" / "site", path)
    if os.getuid() == 0:
        for p in [path, *path.rglob("*")]:
            os.chown(p, WORKSPACE_UID, WORKSPACE_GID, follow_symlinks=False)
    return path


@pytest.fixture(scope="session")
def stack(docker_client, images, workspace, tmp_path_factory):
    """docker-compose.yml up with one worker; down (with its volumes) whatever happens."""
    env = {name: "" for name in settings_documented()}
    env.update(images)
    env.update(WORKSPACE=str(workspace), TRIGGER_PORT=str(free_port()),
               TRIGGER_LOST_AFTER="3")
    project = f"mte2e{uuid.uuid4().hex[:8]}"
    s = Stack(docker_client, project, env, tmp_path_factory.mktemp("compose"))
    try:
        s.up()
        yield s
    finally:
        s.down()


@pytest.fixture
def fresh(stack):
    """The stack as the tests expect it at their start: one worker, default settings."""
    if stack.env != stack.base_env or len(stack.containers("worker")) != 1:
        stack.up()
    else:
        stack.wait_healthy(1)
    return stack


@pytest.fixture
def workspace_owner(workspace) -> tuple[int, int]:
    st = workspace.stat()
    return st.st_uid, st.st_gid
