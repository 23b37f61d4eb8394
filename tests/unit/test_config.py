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
        controller_config.load(environ={"TRIGGER_WORKERS": "http://worker:8000",
                                        "TRIGGER_WORKER_TOKEN": "t", var: value})


def test_finite_numbers_are_taken(tmp_path):
    worker = worker_config.load(environ={"WORKER_WORKDIR": str(tmp_path),
                                         "TRIGGER_WORKER_TOKEN": "t", "WORKER_JOB_TIMEOUT": "90.5",
                                         "WORKER_KILL_GRACE": "0"})
    assert worker["JOB_TIMEOUT"] == 90.5 and worker["KILL_GRACE"] == 0
    controller = controller_config.load(environ={"TRIGGER_WORKER_TOKEN": "t",
                                                 "TRIGGER_MAX_WAIT": "1e3",
                                                 "TRIGGER_WORKERS": "http://worker:8000"})
    assert controller["MAX_WAIT"] == 1000


@pytest.mark.parametrize("var,value", [
    ("TRIGGER_MAX_BODY", "-1"), ("TRIGGER_MAX_BODY", "100"), ("TRIGGER_MAX_WAIT", "-1"),
    ("TRIGGER_DB_BUSY_TIMEOUT", "-1"), ("TRIGGER_LOST_AFTER", "-5"), ("TRIGGER_LOST_AFTER", "0"),
    ("TRIGGER_HEALTH_INTERVAL", "-1"), ("TRIGGER_RESOLVE_INTERVAL", "0"),
    ("TRIGGER_THREADS", "0"), ("TRIGGER_MAX_WAITERS", "-1"), ("TRIGGER_MAX_LOG_BYTES", "-1"),
    ("TRIGGER_LOG_LEVEL", "bogus"),
    ("TRIGGER_WORKERS", "ftp://x"), ("TRIGGER_WORKERS", "notaurl"),
    ("TRIGGER_WORKERS", "http://127.0.0.1:99999"), ("TRIGGER_WORKERS", "http://w:8000/path"),
    ("TRIGGER_WORKERS", "http://ok:8000,http://"),
])
def test_the_controller_refuses_a_value_out_of_range_naming_it(var, value):
    """Taken before, such values made every POST a 413 (MAX_BODY=-1), every wait return at
    once (MAX_WAIT=-1), a traceback at boot (THREADS=0) or jobs queued for ever (a bad URL)."""
    with pytest.raises(controller_config.ConfigError, match=var):
        controller_config.load(environ={"TRIGGER_WORKERS": "http://worker:8000",
                                        "TRIGGER_WORKER_TOKEN": "t", var: value})


@pytest.mark.parametrize("var,value", [
    ("WORKER_THREADS", "0"), ("WORKER_KEEP_RUNS", "0"), ("WORKER_WATCH_DEBOUNCE", "-1"),
    ("WORKER_KEEP_LOG_BYTES", "-1"),
    ("WORKER_LOG_LEVEL", "bogus"),
])
def test_the_worker_refuses_a_value_out_of_range_naming_it(tmp_path, var, value):
    environ = {"WORKER_WORKDIR": str(tmp_path), "TRIGGER_WORKER_TOKEN": "t", var: value}
    with pytest.raises(worker_config.ConfigError, match=var):
        worker_config.load(environ=environ)


def test_the_edges_of_the_ranges_are_taken():
    cfg = controller_config.load(environ={
        "TRIGGER_WORKER_TOKEN": "t", "TRIGGER_MAX_WAIT": "0", "TRIGGER_MAX_BODY": "1024",
        "TRIGGER_THREADS": "1", "TRIGGER_MAX_LOG_BYTES": "0", "TRIGGER_LOG_LEVEL": "DEBUG",
        "TRIGGER_WORKERS": "http://worker:8000, https://[::1]:9/,docker://rbuilder"})
    assert cfg["MAX_WAIT"] == 0 and cfg["THREADS"] == 1 and cfg["MAX_WAITERS"] == 1
    assert len(cfg["WORKERS"]) == 3


@pytest.mark.parametrize("var", ["TRIGGER_WORKER_TOKEN", "TRIGGER_API_TOKEN",
                                 "TRIGGER_GITHUB_SECRET", "TRIGGER_GITLAB_TOKEN"])
def test_an_empty_secret_file_stops_the_controller(tmp_path, var):
    """An empty TRIGGER_API_TOKEN_FILE (a secret that failed to be made) turned the API's
    authentication off without a word."""
    (tmp_path / "secret").write_text("\n")
    environ = {"TRIGGER_WORKER_TOKEN": "t"}
    environ.pop(var, None)  # the file is read only when the variable itself is not set
    environ[f"{var}_FILE"] = str(tmp_path / "secret")
    with pytest.raises(controller_config.ConfigError, match=f"{var}_FILE: .* is empty"):
        controller_config.load(environ=environ)


def test_an_empty_token_file_stops_the_worker(tmp_path):
    (tmp_path / "secret").write_text("")
    with pytest.raises(worker_config.ConfigError, match="TRIGGER_WORKER_TOKEN_FILE: .* is empty"):
        worker_config.load(environ={"WORKER_WORKDIR": str(tmp_path),
                                    "TRIGGER_WORKER_TOKEN_FILE": str(tmp_path / "secret")})


def test_a_controller_open_beyond_loopback_without_an_api_token_says_so(caplog):
    from trigger_server.gunicorn_conf import _warn_if_open

    with caplog.at_level("WARNING", logger="trigger_server"):
        _warn_if_open(["127.0.0.1:8080", "[::1]:8080", "localhost:1", "unix:/run/t.sock"], "")
        assert caplog.text == ""
        _warn_if_open(["0.0.0.0:8080"], "token")
        assert caplog.text == ""
        _warn_if_open(["127.0.0.1:8080", "0.0.0.0:8080"], "")
    assert "no TRIGGER_API_TOKEN: anyone who can reach 0.0.0.0:8080" in caplog.text


def test_the_default_state_folder_is_private_and_one_someone_else_made_is_refused(
        tmp_path, monkeypatch):
    """Its name in the shared temporary folder is predictable: a folder planted there first
    (or a symlink) must not be used, or its records could make the worker kill processes."""
    import os
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ws = tmp_path / "ws"
    ws.mkdir()
    settings = {"WORKER_WORKDIR": str(ws), "TRIGGER_WORKER_TOKEN": "t"}
    path = worker_config.load(environ=settings)["STATE_DIR"]
    assert os.path.dirname(path) == str(tmp_path)
    assert os.stat(path).st_mode & 0o777 == 0o700 and os.stat(path).st_uid == os.geteuid()
    assert worker_config.load(environ=settings)["STATE_DIR"] == path  # again: the same one
    os.chmod(path, 0o777)
    with pytest.raises(worker_config.ConfigError, match="someone else may have made it"):
        worker_config.load(environ=settings)
    os.rmdir(path)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    os.symlink(tmp_path / "elsewhere", path)
    with pytest.raises(worker_config.ConfigError, match="someone else may have made it"):
        worker_config.load(environ=settings)
    os.unlink(path)
    if os.geteuid() == 0:  # (CI runs as root) a private folder, but nobody's
        os.mkdir(path, 0o700)
        os.chown(path, 65534, 65534)
        with pytest.raises(worker_config.ConfigError, match="someone else may have made it"):
            worker_config.load(environ=settings)


def test_a_controller_without_workers_does_not_start():
    """A mistyped TRIGGER_WORKERS (TRIGGER_WORKER=...) left a controller that queued every job
    for ever without a word."""
    for value in (None, "", " , "):
        environ = {"TRIGGER_WORKER_TOKEN": "t"}
        if value is not None:
            environ["TRIGGER_WORKERS"] = value
        with pytest.raises(controller_config.ConfigError, match="TRIGGER_WORKERS is not set"):
            controller_config.load(environ=environ)


def test_a_docker_worker_without_the_docker_sdk_is_a_config_error(monkeypatch):
    """Not a traceback (ModuleNotFoundError) after the plain `pip install .` README gives."""
    import sys

    for name in [m for m in sys.modules if m == "docker" or m.startswith("docker.")] + [
            "trigger_server.docker_workers"]:
        monkeypatch.delitem(sys.modules, name, raising=False)
    import trigger_server

    monkeypatch.delattr(trigger_server, "docker_workers", raising=False)
    monkeypatch.setitem(sys.modules, "docker", None)  # import docker: ImportError
    with pytest.raises(controller_config.ConfigError,
                       match=r"needs the Docker SDK.*pip install '\.\[docker\]'"):
        controller_config.load(environ={"TRIGGER_WORKER_TOKEN": "t",
                                        "TRIGGER_WORKERS": "docker://rbuilder"})


@pytest.mark.parametrize("names,message", [
    ("SHELL", "variable SHELL is always refused"),
    ("V,1BAD", "variable name '1BAD' must match"),
    ("MAKEFLAGS", "variable MAKEFLAGS is always refused"),
])
def test_worker_vars_that_no_request_could_pass_stop_the_worker(tmp_path, names, message):
    """WORKER_VARS=SHELL,1BAD was taken without a word, though neither could ever be used."""
    with pytest.raises(worker_config.ConfigError, match=f"WORKER_VARS: {message}"):
        worker_config.load(environ={"WORKER_WORKDIR": str(tmp_path),
                                    "TRIGGER_WORKER_TOKEN": "t", "WORKER_VARS": names})
