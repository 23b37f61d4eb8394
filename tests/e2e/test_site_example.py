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
        assert "built: job" in fresh.compose("logs", "site", files=FILES).stdout
    finally:
        fresh.compose("rm", "--stop", "--force", "site", files=FILES, check=False)
        del fresh.env["SITE_PORT"]
