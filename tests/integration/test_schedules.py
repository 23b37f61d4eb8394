"""Schedules in a running controller."""

import subprocess
import sys

from .procs import wait_for


def test_a_reboot_schedule_queues_a_job_at_start_and_is_listed(stack):
    stack.server([stack.worker()], TRIGGER_SCHEDULE="@reboot ok\n0 3 * * * fail")
    job = stack.wait_state(1)
    assert (job["target"], job["source"], job["state"]) == ("ok", "schedule", "succeeded")
    rows = stack.get("/schedules")["schedules"]
    assert [r["schedule"] for r in rows] == ["@reboot ok", "0 3 * * * fail"]
    assert rows[0]["last_job"]["id"] == 1
    assert rows[1]["next_fire"].endswith("T03:00:00.000Z") and rows[1]["last_job"] is None


def test_schedules_come_from_a_file_too(stack, tmp_path):
    path = tmp_path / "schedules"
    path.write_text("# every night\n@reboot chatty\n")
    stack.server([stack.worker()], TRIGGER_SCHEDULE_FILE=str(path))
    assert stack.wait_state(1)["target"] == "chatty"


def test_a_bad_schedule_line_stops_the_controller_naming_the_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "TRIGGER_DB": str(tmp_path / "db"),
           "TRIGGER_WORKER_TOKEN": "x", "TRIGGER_SCHEDULE": "@daily ok\n99 * * * * ok"}
    proc = subprocess.run([sys.executable, "-c", "from trigger_server.serve import main; main()"],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "TRIGGER_SCHEDULE line 2" in proc.stderr and "99 * * * *" in proc.stderr


def test_a_schedule_that_never_fires_stops_the_controller_naming_the_line(tmp_path):
    # Feb 31st passes croniter.is_valid; it used to kill the gunicorn worker at boot instead
    env = {"PATH": "/usr/bin:/bin", "TRIGGER_DB": str(tmp_path / "db"),
           "TRIGGER_WORKER_TOKEN": "x", "TRIGGER_BIND": "127.0.0.1:0",
           "TRIGGER_SCHEDULE": "@daily ok\n0 0 31 2 * ok"}
    proc = subprocess.run([sys.executable, "-c", "from trigger_server.serve import main; main()"],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "TRIGGER_SCHEDULE line 2" in proc.stderr and "never fires" in proc.stderr


def test_lines_the_workers_refuse_are_logged_and_listed_with_the_reason(stack):
    """The start check reads a line's syntax only; whether the makefile has its target and
    WORKER_VARS takes its variables is the worker's to say. The controller asks once a
    worker is healthy, and GET /schedules shows why each line's jobs would fail."""
    server = stack.server([stack.worker()], TRIGGER_SCHEDULE="@daily ok\n@daily nosuch\n"
                                                              "@daily ok N=1")
    wait_for(lambda: "'@daily ok N=1'" in server.output(), what="the warnings")
    log = server.output()
    assert "schedule '@daily nosuch': target nosuch is not a target the worker offers" in log
    assert "schedule '@daily ok N=1': " in log and "WORKER_VARS" in log
    assert "schedule '@daily ok':" not in log
    rows = stack.get("/schedules")["schedules"]
    assert rows[0]["problem"] is None
    assert "nosuch is not a target the worker offers" in rows[1]["problem"]
    assert "WORKER_VARS" in rows[2]["problem"]


def test_a_worker_started_again_with_other_vars_is_asked_again_at_once(stack):
    """The lines are checked again as soon as the workers change (here: the worker started
    again with WORKER_VARS=N), not only every 5 minutes."""
    worker = stack.worker()
    server = stack.server([worker], TRIGGER_SCHEDULE="@daily ok N=1")
    wait_for(lambda: stack.get("/schedules")["schedules"][0]["problem"], what="the problem")
    worker.stop()
    worker.env["WORKER_VARS"] = "N"
    worker.start()
    wait_for(lambda: stack.get("/schedules")["schedules"][0]["problem"] is None, timeout=15,
             what="the line to be checked again")
    wait_for(lambda: "schedule '@daily ok N=1': the workers take it now" in server.output(),
             what="the line in the controller's log")
