"""Settings that are numbers of seconds: 'nan' and 'inf' parse as floats, but no limit compares
right with them and JSON cannot carry them (GET /healthz would serve `Infinity`), so both
services refuse to start with them, naming the variable."""

from __future__ import annotations

import pytest

from trigger_server import config as controller_config
from worker import config as worker_config

BAD = ["nan", "inf", "-inf", "Infinity", "1e999"]


@pytest.mark.parametrize("value", BAD)
@pytest.mark.parametrize("var", ["WORKER_JOB_TIMEOUT", "WORKER_KILL_GRACE",
                                 "WORKER_WATCH_DEBOUNCE"])
def test_the_worker_refuses_a_number_that_is_not_finite(tmp_path, var, value):
    environ = {"WORKER_WORKDIR": str(tmp_path), "TRIGGER_WORKER_TOKEN": "t", var: value}
    with pytest.raises(worker_config.ConfigError, match=var):
        worker_config.load(environ=environ)


@pytest.mark.parametrize("value", BAD)
@pytest.mark.parametrize("var", ["TRIGGER_LOST_AFTER", "TRIGGER_MAX_WAIT",
                                 "TRIGGER_HEALTH_INTERVAL", "TRIGGER_RESOLVE_INTERVAL",
                                 "TRIGGER_DB_BUSY_TIMEOUT"])
def test_the_controller_refuses_a_number_that_is_not_finite(var, value):
    with pytest.raises(controller_config.ConfigError, match=var):
        controller_config.load(environ={"TRIGGER_WORKER_TOKEN": "t", var: value})


def test_finite_numbers_are_taken(tmp_path):
    worker = worker_config.load(environ={"WORKER_WORKDIR": str(tmp_path),
                                         "TRIGGER_WORKER_TOKEN": "t", "WORKER_JOB_TIMEOUT": "90.5",
                                         "WORKER_KILL_GRACE": "0"})
    assert worker["JOB_TIMEOUT"] == 90.5 and worker["KILL_GRACE"] == 0
    controller = controller_config.load(environ={"TRIGGER_WORKER_TOKEN": "t",
                                                 "TRIGGER_MAX_WAIT": "1e3"})
    assert controller["MAX_WAIT"] == 1000
