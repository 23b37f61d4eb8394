"""docker:// workers without a Docker engine: the entry syntax, the one place where Docker API
errors become readable, the bounded log, and how the pool chooses around a missing container."""

from __future__ import annotations

import re
import subprocess
import sys
import threading

import pytest
import requests

pytest.importorskip("docker", reason="the Docker SDK is not installed (pip install -e '.[test]')")

import docker.errors  # noqa: E402

from trigger_server import docker_runs as dr  # noqa: E402
from trigger_server import docker_workers as dw  # noqa: E402
from trigger_server.workers import Worker, WorkerPool  # noqa: E402


def test_an_entry_names_a_container_or_service_with_options():
    opts = dw.parse_entry("docker://rbuilder?workdir=/home/docker&user=1000:1000&start=never"
                          "&timeout=60&kill_grace=2&targets=site&targets=check-*&vars=LANG")

    assert opts == dw.Options(name="rbuilder", workdir="/home/docker", user="1000:1000",
                              start="never", timeout=60.0, kill_grace=2.0,
                              targets=("site", "check-*"), vars=("LANG",))
    assert dw.parse_entry("docker://rbuilder") == dw.Options(name="rbuilder")


@pytest.mark.parametrize("entry, message", [
    ("docker://", "must be docker://NAME"),
    ("docker://-x", "must be docker://NAME"),
    ("docker://a/b", "must be docker://NAME"),
    ("docker://a?wrokdir=/x", "unknown option wrokdir"),
    ("docker://a?workdir=relative", "workdir must be an absolute path"),
    ("docker://a?user=root;id", "user must be NAME or UID"),
    ("docker://a?start=maybe", "start must be auto or never"),
    ("docker://a?timeout=soon", "timeout must be a number of seconds"),
    ("docker://a?timeout=0", "timeout must be positive"),
    ("docker://a?vars=SHELL", "variable SHELL is always refused"),
    ("docker://a?user=1&user=2", "user given twice"),
])
def test_a_malformed_entry_is_refused_naming_the_problem(entry, message):
    with pytest.raises(ValueError, match=message):
        dw.parse_entry(entry)


def connection_error(cause: OSError) -> requests.ConnectionError:
    return requests.ConnectionError(requests.packages.urllib3.exceptions.ProtocolError(
        "Connection aborted.", cause))


@pytest.mark.parametrize("exc, message", [
    (docker.errors.NotFound("No such container: rb"), "no container or compose service named 'rb'"),
    (connection_error(PermissionError(13, "Permission denied")),
     "permission denied on the Docker socket (unix:///var/run/docker.sock)"),
    (connection_error(FileNotFoundError(2, "No such file")),
     "no Docker socket at unix:///var/run/docker.sock"),
    (connection_error(ConnectionRefusedError(111, "refused")), "refused the connection"),
    (docker.errors.DockerException("Error while fetching server API version: timeout"),
     "cannot reach the Docker daemon"),
])
def test_docker_errors_become_one_readable_message(monkeypatch, exc, message):
    monkeypatch.delenv("DOCKER_HOST", raising=False)

    with pytest.raises(dw.DockerProblem, match=re.escape(message)), dw.docker_api("rb"):
        raise exc


def test_an_api_refusal_keeps_the_daemons_explanation():
    response = requests.Response()
    response.status_code = 409
    refusal = docker.errors.APIError("conflict", response, explanation="container rb is paused")

    expected = "refused (container rb): container rb is paused"
    with pytest.raises(dw.DockerProblem, match=re.escape(expected)), dw.docker_api("rb"):
        raise refusal


def test_the_log_serves_offsets_and_forgets_what_was_read():
    log = dr.RunLog()
    log.append(b"hello ")
    log.append(b"world\n")

    assert log.read(0, 3) == b"hel"
    assert log.read(3, 100) == b"lo world\n"
    assert log.base == 3 and log.size == 12
    with pytest.raises(ValueError):
        log.read(0, 1)  # already taken


def test_a_writer_waits_for_the_reader_when_the_bound_is_reached():
    log = dr.RunLog(limit=10)
    log.append(b"12345678")
    writer = threading.Thread(target=log.append, args=(b"abcdefgh",))
    writer.start()
    writer.join(0.3)
    assert writer.is_alive()  # waiting: nothing is lost

    assert log.read(0, 100) == b"12345678"
    assert log.read(8, 100) == b""  # the reader has it all: room again
    writer.join(5)

    assert log.read(8, 100) == b"abcdefgh"


def test_output_nobody_reads_is_dropped_after_a_while_and_said_so():
    log = dr.RunLog(limit=10, patience=0.2)
    log.append(b"12345678")
    log.append(b"too much")  # nobody reads for 0.2 s: dropped

    log.read(8, 100)
    log.append(b"ok\n")

    assert log.read(8, 100) == (b"\n*** maketrigger: 8 bytes of output dropped "
                                b"(nobody read the log)\nok\n")


@pytest.mark.parametrize("out,pgid", [
    (b"1234\n", 1234), (b"1\n", None), (b"", None), (b"gone\n", None),
    ("\u00b2\n".encode(), None),  # str.isdigit() is true for it, int() refuses it
    (b"9" * 5000, None),  # int() refuses more than 4300 digits
], ids=["pid", "init", "empty", "text", "superscript", "5000-digits"])
def test_a_pidfile_is_read_as_ascii_digits(monkeypatch, out, pgid):
    transport = dr.DockerTransport()
    monkeypatch.setattr(transport, "_exec", lambda attrs, cmd, user: (0, out, b""))
    assert transport._read_pidfile({}, "/tmp/run.pid") == pgid


def test_a_missing_container_takes_a_job_only_when_no_other_worker_could():
    pool = WorkerPool([], client=None)
    agent = Worker(url="http://w:8000", name="w", configured="http://w:8000", healthy=False)
    missing = dw.DockerWorker(url="docker://rb", name="rb", configured="docker://rb",
                              healthy=True, fails_jobs=True)
    pool._workers = {w.url: w for w in (agent, missing)}

    assert pool.pick(None, "site") is None  # the agent will come back: wait for it
    assert pool.pick("rb", "site") is missing  # asked for by name: fail the job, saying why
    del pool._workers[agent.url]
    assert pool.pick(None, "site") is missing


def test_a_docker_worker_answers_to_its_service_and_its_container_name():
    worker = dw.DockerWorker(url="docker://p-rb-2", name="rb", configured="docker://rb",
                             container="p-rb-2", state="running")

    assert worker.matches("rb") and worker.matches("p-rb-2") and not worker.matches("p-rb-1")
    assert worker.to_dict()["container"] == "p-rb-2"


def test_a_controller_without_docker_workers_never_loads_the_sdk(tmp_path):
    code = (
        "import sys\n"
        "from trigger_server import create_app\n"
        f"app = create_app({{'DB': {str(tmp_path / 't.db')!r}, 'INSECURE': True,\n"
        "                   'WORKERS': ['http://127.0.0.1:9']})\n"
        "pool = app.extensions['pool']\n"
        "pool.refresh(); pool.check_all()\n"
        "print(sorted(m for m in sys.modules\n"
        "             if m == 'docker' or m.endswith(('docker_workers', 'docker_runs'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)

    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("chunks", [
    [b"maketrigger-pgid 28\nabout to fail\n", b"make: *** [Makefile:7: fail] Error 3\n"],
    # stdout and stderr are two pipes: make's error may come before the launcher's first line
    [b"make: *** [Makefile:7: fail] Error 3\n", b"maketrigger-pgid 28\nabout to fail\n"],
    [b"make: *** [Makefile:7: fail] Error 3\nmaketrigger-pgid 2", b"8\nabout to fail\n"],
], ids=["in order", "stderr first", "split"])
def test_makes_process_group_is_read_wherever_its_line_comes(chunks):
    """CI saw a failing build recorded as "make did not start" (no exit status): its stderr
    line came first, and only the first line was looked at for the process group."""
    run = dr.DockerRun(id="r", target="fail", vars={}, container="c", container_id="c",
                       pidfile="/tmp/p", timeout=60, kill_grace=1)
    dr.DockerTransport()._pump(run, iter(chunks))
    assert run.pgid == 28
    text = run.log.read(0, 1 << 20)
    assert b"maketrigger-pgid" not in text and b"about to fail" in text and b"Error 3" in text
