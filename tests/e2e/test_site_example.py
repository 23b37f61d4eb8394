"""docker-compose.site.yml, the pattern maketrigger is for: a service that asks for a build,
waits for it, and then serves what it made."""

from __future__ import annotations

import pytest
import requests

from ..integration.procs import free_port
from .stack import wait_until

pytestmark = pytest.mark.docker

FILES = ("docker-compose.yml", "docker-compose.site.yml")


def test_the_site_service_serves_the_pages_its_build_made(fresh, workspace):
    port = free_port()
    fresh.env["SITE_PORT"] = str(port)
    try:
        fresh.compose("up", "-d", "site", files=FILES)

        page = wait_until("the site to serve its index",
                          lambda: (r := requests.get(f"http://127.0.0.1:{port}/", timeout=5)).ok
                          and r.text, timeout=60)

        assert '<a href="about.html">About this site</a>' in page
        site_jobs = fresh.get("/jobs", params={"target": "site", "limit": 1}).json()["jobs"]
        assert site_jobs[0]["state"] == "succeeded"
        assert "built: serving" in fresh.compose("logs", "site", files=FILES).stdout
    finally:
        fresh.compose("rm", "--stop", "--force", "site", files=FILES, check=False)
        del fresh.env["SITE_PORT"]


def test_the_site_service_waits_through_a_restart_of_the_controller(fresh, workspace):
    """The controller restarts (an `up -d` that recreates it, a crash) while the site's build
    runs: the site still serves once the build has succeeded. A single POST with "wait" was
    answered 202 by the stopping controller, and the site exited for good."""
    port = free_port()
    fresh.env["SITE_PORT"] = str(port)
    makefile = workspace / "Makefile"
    original = makefile.read_text()
    slow = original.replace('\t@echo "site: $(words $(HTML)) pages in public/"',
                            '\t@sleep 8\n\t@echo "site: $(words $(HTML)) pages in public/"')
    assert slow != original
    makefile.write_text(slow)  # in place: its owner stays
    try:
        fresh.compose("up", "-d", "site", files=FILES)
        job = wait_until("the site's build to run", lambda: next(
            (j for j in fresh.get("/jobs", params={"target": "site", "limit": 1}).json()["jobs"]
             if j["state"] == "running"), None), timeout=60)
        fresh.compose("restart", "controller")
        page = wait_until("the site to serve its index",
                          lambda: (r := requests.get(f"http://127.0.0.1:{port}/", timeout=5)).ok
                          and r.text, timeout=90)
        assert '<a href="about.html">About this site</a>' in page
        assert fresh.job(job["id"])["state"] == "succeeded"
    finally:
        makefile.write_text(original)
        fresh.compose("rm", "--stop", "--force", "site", files=FILES, check=False)
        del fresh.env["SITE_PORT"]
