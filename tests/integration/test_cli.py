"""The `trigger` command against a real controller: its output and its exit statuses."""

import contextlib
import shutil
import socket
import subprocess
import sys
import threading
import time
import types

import pytest
import requests

from .procs import free_port, wait_for


@contextlib.contextmanager
def another_server(handler):
    """Another HTTP server on 127.0.0.1 (not a controller), with `handler`: its URL."""
    import http.server

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def trigger(stack, *args, url=None, timeout=60):
    exe = [shutil.which("trigger")] if shutil.which("trigger") else [
        sys.executable, "-c", "from trigger_server.cli import main; main()"]
    return subprocess.run([*exe, "--url", url or stack.url, *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cli_stack(module_stack):
    ws = module_stack.workspace("cli")
    module_stack.server([module_stack.worker(ws, name="cli", WORKER_VARS="MSG")])
    return module_stack


def test_run_wait_exits_zero_on_success_and_records_source_cli(cli_stack):
    out = trigger(cli_stack, "run", "ok", "--wait")
    assert out.returncode == 0, out.stderr
    assert "succeeded" in out.stderr
    job_id = int(out.stderr.split()[1].rstrip(":"))
    assert cli_stack.job(job_id)["source"] == "cli"


def test_run_wait_exits_with_makes_own_status_on_failure(cli_stack):
    out = trigger(cli_stack, "run", "fail", "--wait")
    assert out.returncode == 2
    assert "failed" in out.stderr


def test_run_follow_prints_the_log_live(cli_stack):
    out = trigger(cli_stack, "run", "chatty", "--follow")
    assert out.returncode == 0
    assert [f"line {i}" in out.stdout for i in range(1, 6)] == [True] * 5


def test_run_passes_variables(cli_stack):
    out = trigger(cli_stack, "run", "marker", "MSG=from the cli", "--wait")
    assert out.returncode == 0, out.stderr
    assert (cli_stack.tmp / "cli" / "marker.txt").read_text() == "from the cli\n"


def test_run_without_wait_prints_the_job_id(cli_stack):
    out = trigger(cli_stack, "run", "ok")
    assert out.returncode == 0
    job_id = int(out.stdout.strip())
    assert cli_stack.wait_state(job_id)["state"] == "succeeded"


@pytest.mark.parametrize("args,code,message", [
    (["run", "-x"], 64, ""),                         # looks like an option: usage error
    (["run", "--", "-x"], 65, "start with '-'"),     # rejected before it is sent
    (["run", "a;b"], 65, "';'"),
    (["run", "nope"], 65, "not a target"),
    (["run", "ok", "SHELL=/bin/sh"], 65, "always refused"),
    (["run", "ok", "--bogus"], 64, "No such option"),
    (["status", "999"], 65, "no job 999"),
    (["cancel", "999"], 65, "no job 999"),
])
def test_errors_have_their_own_exit_statuses(cli_stack, args, code, message):
    out = trigger(cli_stack, *args)
    assert out.returncode == code, (out.returncode, out.stderr)
    assert message in out.stderr


def test_an_unreachable_server_exits_69(cli_stack):
    out = trigger(cli_stack, "status", url=f"http://127.0.0.1:{free_port()}")
    assert out.returncode == 69
    assert "cannot reach server" in out.stderr
    # the cause itself, not urllib3's pool and object names around it
    assert "Connection refused" in out.stderr and "HTTPConnectionPool" not in out.stderr


def test_timeout_bounds_the_wait_and_exits_124(cli_stack):
    out = trigger(cli_stack, "run", "slow", "SECS=5", "--wait", "--timeout", "0.5")
    assert out.returncode == 65  # SECS is not in WORKER_VARS
    out = trigger(cli_stack, "run", "slow", "--wait", "--timeout", "0.5")
    assert out.returncode == 124 and "--timeout" in out.stderr
    job_id = int(out.stderr.split()[1].rstrip(":"))
    assert f"job {job_id} still running after --timeout" in out.stderr
    # A job that waits behind it is said to be queued, not running.
    queued = trigger(cli_stack, "run", "chatty", "--wait", "--timeout", "0.5")
    assert queued.returncode == 124
    queued_id = int(queued.stderr.split()[1].rstrip(":"))
    assert f"job {queued_id} still queued after --timeout" in queued.stderr, queued.stderr
    for job in (job_id, queued_id):
        assert trigger(cli_stack, "cancel", str(job)).returncode == 0
        assert cli_stack.wait_state(job)["state"] == "cancelled"


def test_a_job_time_limit_exits_124_and_a_cancel_125(cli_stack):
    out = trigger(cli_stack, "run", "slow", "--wait", "--job-timeout", "1")
    assert out.returncode == 124 and "timed out after 1 s" in out.stderr
    running = subprocess.Popen(
        [sys.executable, "-c", "from trigger_server.cli import main; main()", "--url",
         cli_stack.url, "run", "slow", "--wait"], stderr=subprocess.PIPE, text=True)
    job_id = int(running.stderr.readline().split()[1].rstrip(":"))
    cli_stack.wait_state(job_id, "running")
    trigger(cli_stack, "cancel", str(job_id))
    assert running.wait(30) == 125


def test_status_log_workers_and_targets_print_what_the_api_says(cli_stack):
    job_id = cli_stack.post(json={"target": "ok", "wait": True}).json()["id"]
    table = trigger(cli_stack, "status")
    assert table.returncode == 0 and f"{job_id}" in table.stdout and "succeeded" in table.stdout
    one = trigger(cli_stack, "status", str(job_id))
    assert '"state": "succeeded"' in one.stdout
    assert "building ok" in trigger(cli_stack, "log", str(job_id)).stdout
    assert "healthy" in trigger(cli_stack, "workers").stdout
    targets = trigger(cli_stack, "targets").stdout
    assert "ok" in targets and "succeed quickly" in targets


def test_a_url_without_its_scheme_is_a_usage_error(cli_stack):
    out = trigger(cli_stack, "status", url=cli_stack.url.removeprefix("http://"))
    assert out.returncode == 64 and "must start with http://" in out.stderr


def test_following_an_unreachable_server_backs_off_then_exits_69(monkeypatch, capsys):
    """It retried without a pause (about 500 requests a second) and never ended."""
    from trigger_server import cli

    calls = []
    real = cli.Api.call

    def counted(self, *args, **kw):
        calls.append(args[1])
        return real(self, *args, **kw)

    monkeypatch.setattr(cli.Api, "call", counted)
    monkeypatch.setattr(cli, "GIVE_UP", 3.0)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--url", f"http://127.0.0.1:{free_port()}", "log", "7", "--follow"])
    assert exit_.value.code == 69
    assert "for 3 s; the job goes on: trigger status 7" in capsys.readouterr().err
    assert 3 <= len(calls) <= 6  # tries after 0.5, 1, 2 s of pause; not hundreds


def test_timeout_bounds_the_wait_when_the_server_stops_answering(capsys):
    """At --timeout the CLI asks once how the job stands; a server that took the connection
    but never answered held it for the default 30 s (found by a review)."""
    from trigger_server import cli

    with socket.socket() as listener:  # accepts (the kernel does), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        api = cli.Api(f"http://127.0.0.1:{listener.getsockname()[1]}", token=None)
        started = time.monotonic()
        with pytest.raises(cli.Abort) as abort:
            cli.follow(api, 7, deadline=time.monotonic() + 0.5, echo=False)
        took = time.monotonic() - started
    assert abort.value.code == 124
    assert "job 7 not known to have ended after --timeout" in str(abort.value)
    assert took < 6, took  # the log's read (0.5 s), a pause, the last look (LAST_LOOK)


def test_a_job_that_ended_at_the_timeout_is_answered_with_its_whole_log(capsys):
    """Found ended by the last look at --timeout: its state is the answer, and with --follow
    the rest of its log (often make's error lines) is printed, not dropped."""
    from trigger_server import cli

    class Server:  # what the controller answers, for a job that has just ended
        def json(self, method, path, **kw):
            return {"id": 7, "state": "failed", "log_size": 12, "exit_code": 2}

        def call(self, method, path, **kw):
            assert (path, kw["params"]) == ("/jobs/7/log", {"offset": 0})
            return types.SimpleNamespace(content=b"make: *** 2\n")

    job = cli.follow(Server(), 7, deadline=time.monotonic() - 1, echo=True)
    assert job["state"] == "failed"
    assert capsys.readouterr().out == "make: *** 2\n"


def test_a_server_too_busy_to_stream_the_log_is_waited_for_not_a_refusal(
        module_stack, monkeypatch, capsys):
    """Every wait slot taken: the log follow of `--wait` is answered 429. That exited 65
    ("rejected") for a job that had been accepted and then succeeded; nor may it end as
    "unreachable" after GIVE_UP while the server answers about the job."""
    from trigger_server import cli

    monkeypatch.setattr(cli, "GIVE_UP", 0.5)  # far less than the 429s last
    ws = module_stack.workspace("busy")
    server = module_stack.server([module_stack.worker(ws, name="busy", WORKER_VARS="SECS")],
                                 db=str(module_stack.tmp / "busy.db"), TRIGGER_MAX_WAITERS=1)
    holder = threading.Thread(target=lambda: requests.post(
        f"{server.url}/jobs", json={"target": "slow", "vars": {"SECS": "8"}, "wait": 60},
        timeout=60))
    holder.start()
    try:
        wait_for(lambda: requests.get(f"{server.url}/jobs", timeout=10).json()["jobs"],
                 what="the holder's job, which holds the only wait slot")
        with pytest.raises(SystemExit) as exit_:
            cli.main(["--url", server.url, "run", "ok", "--wait"])
        assert exit_.value.code == 0, capsys.readouterr().err
        assert "succeeded" in capsys.readouterr().err
    finally:
        holder.join(60)


def test_a_stopping_server_that_ends_every_follow_at_once_is_not_hammered():
    """A controller that is stopping answers a log follow at once, with nothing, while the job
    runs on: the CLI asked again without a pause (265 follows in 3 s)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from trigger_server import cli

    asked = []

    class Stopping(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            asked.append(self.path)
            body = b"" if "/log" in self.path else b'{"id": 7, "state": "running"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Stopping)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = cli.Api(f"http://127.0.0.1:{server.server_address[1]}", "")
        with pytest.raises(cli.Abort) as stopped:
            cli.follow(api, 7, deadline=time.monotonic() + 3, echo=False)
        assert stopped.value.code == cli.EXIT_TIMEOUT
        follows = [p for p in asked if "/log" in p]
        assert 2 <= len(follows) <= 6, len(follows)  # after pauses of 0.5, 1, 2 s
    finally:
        server.shutdown()


@pytest.mark.parametrize("body,kind", [(b"<html>hello</html>", "text/html"),
                                       (b'{"something": "else"}', "application/json"),
                                       (b"[1, 2]", "application/json")])
def test_a_server_that_is_not_a_controller_exits_69_with_a_word_not_a_traceback(
        cli_stack, body, kind):
    """Another server at the URL (a proxy's page, a mistyped port) answers 200 with something
    else: exit 69 with a line saying so, not a traceback and exit 1 (make's own status)."""
    import http.server

    class Other(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_DELETE = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    with another_server(Other) as url:
        for args in (["workers"], ["targets"], ["status"], ["status", "1"], ["run", "ok"],
                     ["cancel", "1"], ["log", "1"]):
            out = trigger(cli_stack, *args, url=url)
            assert out.returncode == 69, (args, out.stderr)
            assert "did not answer as a maketrigger controller does" in out.stderr, out.stderr
            assert "Traceback" not in out.stderr


@pytest.mark.parametrize("how", ["--wait", "--follow"])
def test_timeout_bounds_a_build_that_keeps_printing(cli_stack, how):
    """The time limit was only the stream's read timeout: a build printing a line every 0.2 s
    (`chatty`, 1 s in all) kept a `--timeout 0.3` waiting to its end, and exited 0."""
    out = trigger(cli_stack, "run", "chatty", how, "--timeout", "0.3")
    assert out.returncode == 124, out.stderr
    job_id = int(out.stderr.split()[1].rstrip(":"))
    assert f"job {job_id} still running after --timeout" in out.stderr, out.stderr
    cli_stack.wait_state(job_id)


def test_another_servers_error_page_exits_69_not_65(cli_stack):
    """A mistyped --url that reaches another server's 404 page is not a refusal by the API
    (65: fix the request) but a server that is not the controller (69)."""
    import http.server

    class NotFound(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    with another_server(NotFound) as url:
        for args in (["status", "5"], ["targets"], ["run", "ok"], ["log", "5"]):
            out = trigger(cli_stack, *args, url=url)
            assert out.returncode == 69, (args, out.stderr)
            if args[0] != "run":  # (a POST gets that server's 501: a failing server, as said)
                assert "not as a maketrigger controller does (is --url right?)" in out.stderr
    refused = trigger(cli_stack, "status", "999999")  # the API's own 404 is still a refusal
    assert refused.returncode == 65 and "no job 999999" in refused.stderr, refused.stderr


def test_python_m_runs_the_cli(cli_stack):
    out = subprocess.run([sys.executable, "-m", "trigger_server.cli", "--url", cli_stack.url,
                          "run", "ok", "--wait"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "succeeded" in out.stderr, out.stderr
