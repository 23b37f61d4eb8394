"""README "Configuration": a setting given to the compose file (in .env or the environment) is
its service's. The compose file hands each one on by name, so one it left out would be dropped
without a word: tests/e2e/test_compose_files.py checks the names, this that values arrive."""

from __future__ import annotations

import pytest
import requests

from .stack import wait_until

pytestmark = pytest.mark.docker


def test_schedules_limits_and_watch_rules_reach_their_services(fresh):
    fresh.up(TRIGGER_SCHEDULE="@reboot check-titles\n@yearly stats", TRIGGER_TZ="Europe/Berlin",
             TRIGGER_MAX_BODY="2048", TRIGGER_WATCH="pages/*.md site", WORKER_KEEP_RUNS="7")

    schedules = fresh.get("/schedules").json()["schedules"]
    assert [s["target"] for s in schedules] == ["check-titles", "stats"]
    # Midnight on January 1st in Berlin (UTC+1 in winter), given in UTC.
    assert "T23:00:00" in schedules[1]["next_fire"]

    def rebooted():
        jobs = fresh.get("/jobs").json()["jobs"]
        return next((j for j in jobs if j["source"] == "schedule"), None)

    job = wait_until("the @reboot schedule's job", rebooted, timeout=60)
    assert job["target"] == "check-titles"
    assert fresh.wait_for_job(job["id"])["state"] == "succeeded"

    big = requests.post(fresh.url + "/jobs", data={"target": "stats", "note": "x" * 4096},
                        timeout=10)
    assert big.status_code == 413, big.text

    env = fresh.container("worker").attrs["Config"]["Env"]
    assert "TRIGGER_WATCH=pages/*.md site" in env and "WORKER_KEEP_RUNS=7" in env
