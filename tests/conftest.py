"""What every test folder shares: the Docker engine, for the tests that need one."""

import os

import docker
import pytest


@pytest.fixture(scope="session")
def docker_client():
    """The local Docker engine. Without one: skip with the reason, except in CI, where the
    tests that need it must run (CI starts one with scripts/ci-docker.sh)."""
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        reason = f"no Docker engine reachable ({exc.__class__.__name__}: {exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must run scripts/ci-docker.sh first", pytrace=False)
        pytest.skip(reason)
    yield client
    client.close()
