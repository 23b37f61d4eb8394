"""Host cron, for real: Debian's cron daemon runs the README's crontab lines against a live
controller, and a failed build makes the cron command fail (so cron would mail it).

Needs root (to write /etc/cron.d) and the `cron` package. Without them the tests are skipped,
except under CI=true, where that is a failure. The wait is bounded: the lines fire at the next
minute boundary, and the builds take a second.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CRON_D = Path("/etc/cron.d")
SAFETY = 3  # seconds before a minute boundary that a new cron file must exist by
AFTER_BOUNDARY = 45  # seconds the lines have, after the boundary, to report

MAKEFILE = """\
site:
\t@echo built site
report:
\t@echo built report
broken:
\t@echo about to fail; exit 3
broken-too:
\t@echo about to fail too; exit 4
.PHONY: site report broken broken-too
"""


def require_cron() -> str:
    """The cron binary, or a skip (a failure under CI=true) saying what is missing."""
    cron = shutil.which("cron", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    problem = None
    if cron is None:
        problem = "the cron daemon is not installed (apt-get install -y cron)"
    elif os.geteuid() != 0:
        problem = "cron tests need root: they write /etc/cron.d and run the daemon"
    elif not CRON_D.is_dir():
        problem = f"{CRON_D} does not exist: this cron is not Debian's"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{problem}; CI must provide it", pytrace=False)
        pytest.skip(problem)
    return cron


def trigger_command() -> str:
    """The `trigger` script of this Python (a pyenv shim would need pyenv's environment)."""
    here = Path(sys.executable).parent / "trigger"
    found = str(here) if here.exists() else shutil.which("trigger")
    assert found, "the trigger CLI is not installed: pip install -e ."
    return found


def cron_lines(url: str, results: Path, log: Path) -> dict[str, str]:
    """label -> the README's crontab command, its output kept in `log` and its exit status
    appended to `results`."""
    readme = {
        "trigger-site": (f"trigger --url {url} run site --wait", f">>{log} 2>&1"),
        "trigger-broken": (f"trigger --url {url} run broken --wait", f">>{log} 2>&1"),
        "curl-report": (f"curl -fsS -X POST {url}/jobs -d target=report -d wait=1 >/dev/null",
                        f"2>>{log}"),
        "curl-broken-too": (f"curl -fsS -X POST {url}/jobs -d target=broken-too -d wait=1 "
                            ">/dev/null", f"2>>{log}"),
    }
    return {label: f'{cmd} {keep}; echo "{label} exit=$?" >>{results}'
            for label, (cmd, keep) in readme.items()}


def write_cron_file(path: Path, lines: dict[str, str]) -> None:
    """An /etc/cron.d file: root's, mode 0644, replaced atomically (cron skips dot names)."""
    env = {"SHELL": "/bin/sh",
           "PATH": f"{Path(trigger_command()).parent}:/usr/local/bin:/usr/bin:/bin",
           "MAILTO": '""', "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    text = "# written by maketrigger's tests/integration/test_cron.py; removed when it ends\n"
    text += "".join(f"{k}={v}\n" for k, v in env.items())
    text += "".join(f"* * * * * root {cmd}\n" for cmd in lines.values())
    tmp = path.with_name("." + path.name)
    tmp.write_text(text)
    os.chown(tmp, 0, 0)
    tmp.chmod(0o644)
    os.replace(tmp, path)


def next_boundary() -> float:
    """The next minute boundary (epoch seconds) that is at least SAFETY seconds away."""
    now = time.time()
    boundary = (now // 60 + 1) * 60
    if boundary - now < SAFETY:
        time.sleep(boundary - now + 0.5)  # too close to tell on which side cron reads the file
        boundary += 60
    return boundary


def running_crons() -> list[int]:
    out = subprocess.run(["pgrep", "-x", "cron"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


class CronDaemon:
    """`cron -f` in its own process group, or a daemon that was already running."""

    def __init__(self, binary: str, log: Path):
        self.binary, self.log_path = binary, log
        self.proc: subprocess.Popen | None = None
        self.others = running_crons()

    def start(self) -> None:
        if self.others:
            return  # Debian's cron rereads /etc/cron.d each minute; a second one would not lock
        self.log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([self.binary, "-f", "-L", "15"], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"cron exited {self.proc.returncode}: {self.output()}")

    def output(self) -> str:
        if self.proc is None:
            return f"(relying on the cron daemon already running: pids {self.others})"
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


def read_results(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    found = {}
    for line in path.read_text().splitlines():
        label, _, status = line.partition(" exit=")
        if status.isdigit():  # a line being written is read on the next poll
            found[label] = int(status)
    return found


@pytest.fixture(scope="module")
def cron_run(module_stack, request):
    """The four README lines, run once by a real cron daemon: their exit statuses and jobs."""
    binary = require_cron()
    stack = module_stack
    stack.server([stack.worker(stack.workspace("cron", makefile=MAKEFILE), name="cron")])
    results, log = stack.tmp / "cron-results.txt", stack.tmp / "cron-lines.log"
    lines = cron_lines(stack.url, results, log)
    cron_file = CRON_D / f"maketrigger-test-{os.getpid()}"
    daemon = CronDaemon(binary, stack.tmp / "cron-daemon.log")

    def clean_up():
        cron_file.unlink(missing_ok=True)
        daemon.stop()

    request.addfinalizer(clean_up)
    boundary = next_boundary()
    write_cron_file(cron_file, lines)
    daemon.start()
    # A daemon that was already running may reread /etc/cron.d one minute late.
    deadline = boundary + AFTER_BOUNDARY + (60 if daemon.others else 0)
    while len(read_results(results)) < len(lines) and time.time() < deadline:
        daemon.check()
        time.sleep(0.5)
    cron_file.unlink()  # fire once: the next minute must not add jobs
    found = read_results(results)
    detail = (f"\ncron: {daemon.output()}\nlines' output: "
              f"{log.read_text() if log.exists() else '(none)'}\njobs: {stack.get('/jobs')}")
    assert set(found) == set(lines), (
        f"by {time.strftime('%H:%M:%S', time.localtime(deadline))}, only {sorted(found)} of "
        f"{sorted(lines)} had run (cron file written for the minute starting "
        f"{time.strftime('%H:%M', time.localtime(boundary))}){detail}")
    jobs = stack.get("/jobs")["jobs"]
    return found, {j["target"]: j for j in jobs}, [j["target"] for j in jobs], detail


def test_the_trigger_cli_line_builds_and_exits_0(cron_run):
    found, jobs, _, detail = cron_run
    assert found["trigger-site"] == 0, detail
    job = jobs["site"]
    assert (job["state"], job["exit_code"], job["source"]) == ("succeeded", 0, "cli"), detail


def test_the_trigger_cli_line_exits_with_makes_status_when_the_build_fails(cron_run):
    found, jobs, _, detail = cron_run
    job = jobs["broken"]
    assert (job["state"], job["exit_code"], job["source"]) == ("failed", 2, "cli"), detail
    assert found["trigger-broken"] == 2, detail


def test_the_curl_line_builds_and_exits_0(cron_run):
    found, jobs, _, detail = cron_run
    assert found["curl-report"] == 0, detail
    job = jobs["report"]
    assert (job["state"], job["exit_code"], job["source"]) == ("succeeded", 0, "api"), detail


def test_the_curl_line_exits_22_when_the_build_fails(cron_run):
    found, jobs, _, detail = cron_run
    assert found["curl-broken-too"] == 22, detail
    job = jobs["broken-too"]
    assert (job["state"], job["exit_code"], job["source"]) == ("failed", 2, "api"), detail


def test_each_line_queued_exactly_one_job(cron_run):
    _, _, targets, detail = cron_run
    assert sorted(targets) == ["broken", "broken-too", "report", "site"], detail
