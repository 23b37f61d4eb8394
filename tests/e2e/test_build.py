"""A build requested from the host runs in the worker container, on the bind-mounted workspace,
and its result comes back: over plain HTTP (curl) and through the `trigger` CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker


def curl(*args: str) -> subprocess.CompletedProcess:
    if not shutil.which("curl"):
        pytest.fail("curl is not installed (apt-get install curl)", pytrace=False)
    return subprocess.run(["curl", "--silent", "--show-error", *args], capture_output=True,
                          text=True, timeout=120)


def trigger_cli() -> str:
    """The `trigger` console script of the Python running the tests (pip install .)."""
    beside = Path(sys.executable).with_name("trigger")
    found = str(beside) if beside.exists() else shutil.which("trigger")
    if not found:
        pytest.fail("the trigger CLI is not installed: pip install .", pytrace=False)
    return found


def test_a_build_writes_into_the_workspace_as_the_workspaces_owner(fresh, workspace,
                                                                    workspace_owner):
    shutil.rmtree(workspace / "public", ignore_errors=True)

    done = curl("--fail", "-d", "target=site", "-d", "wait=true", f"{fresh.url}/jobs")

    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["state"] == "succeeded" and job["exit_code"] == 0
    page = workspace / "public" / "about.html"
    assert "<h1>About this site</h1>" in page.read_text()
    for made in [workspace / "public", *(workspace / "public").iterdir()]:
        st = made.stat()
        assert (st.st_uid, st.st_gid) == workspace_owner, made


def test_the_log_comes_back_over_http(fresh):
    job = fresh.post_job("site", wait=True).json()

    done = curl("--fail", f"{fresh.url}/jobs/{job['id']}/log")

    assert done.returncode == 0, done.stderr
    assert "make -C /workspace -- site" in done.stdout
    assert "site: 3 pages in public/" in done.stdout


def test_a_failing_target_is_reported_failed_with_makes_exit_code(fresh):
    done = curl("--write-out", "\n%{http_code}", "-d", "target=broken", "-d", "wait=true",
                f"{fresh.url}/jobs")

    body, status = done.stdout.rsplit("\n", 1)
    job = json.loads(body)
    assert status == "422"
    assert job["state"] == "failed"
    assert job["exit_code"] == 2  # make's own status when a recipe fails


def test_the_cli_on_the_host_exits_with_makes_exit_code(fresh):
    cli = [trigger_cli(), "--url", fresh.url]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIGGER_")}

    ok = subprocess.run([*cli, "run", "site", "--wait"], capture_output=True, text=True,
                        timeout=120, env=env)
    failed = subprocess.run([*cli, "run", "broken", "--wait"], capture_output=True, text=True,
                            timeout=120, env=env)

    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert failed.returncode == 2, failed.stdout + failed.stderr
    last = fresh.get("/jobs", params={"target": "broken", "limit": 1}).json()["jobs"][0]
    log = subprocess.run([*cli, "log", str(last["id"])], capture_output=True, text=True,
                         timeout=60, env=env)
    assert "about to fail" in log.stdout


def test_make_runs_as_the_workspaces_owner_not_root(fresh, workspace_owner):
    job = fresh.post_job("check-titles").json()
    fresh.wait_for_job(job["id"], ("running",))
    worker = fresh.container("worker")

    processes = worker.top(ps_args="-o pid,uid,args")["Processes"]

    makes = [p for p in processes if "make -C /workspace" in p[2]]
    assert makes, processes
    assert {int(p[1]) for p in makes} == {workspace_owner[0]}
    assert f"uid {workspace_owner[0]}" in worker.logs().decode()
    assert fresh.wait_for_job(job["id"])["state"] == "succeeded"


def test_the_cli_in_the_controllers_image_as_the_quick_start_runs_it(fresh):
    """README: `docker compose exec controller trigger run site --wait` (no pip install on the
    host, whose system pip may refuse; the CLI finds the controller and its token itself)."""
    ok = fresh.compose("exec", "-T", "controller", "trigger", "run", "site", "--wait",
                       check=False, timeout=180)
    failed = fresh.compose("exec", "-T", "controller", "trigger", "run", "broken", "--wait",
                           check=False, timeout=180)

    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "succeeded" in ok.stderr
    assert failed.returncode == 2, failed.stdout + failed.stderr
