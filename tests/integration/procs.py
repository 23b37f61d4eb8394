"""Real processes for the integration tests: trigger-worker and trigger-server under gunicorn,
each in its own process group on a free 127.0.0.1 port, always killed afterwards."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import requests

from worker import deferred_log

TOKEN = "test-worker-token"
MAKEFILE = """\
SECS ?= 30
## ok: succeed quickly
ok:
\t@echo building ok
## fail: fail with make's exit status 2
fail:
\t@echo about to fail; exit 3
slow: ## take SECS seconds
\t@echo start; sleep $(SECS); echo done
tree: ## leave a process tree behind
\t@sleep 300.25 & sleep 301.25 & echo tree started; wait
chatty:
\t@for i in 1 2 3 4 5; do echo line $$i; sleep 0.2; done
marker: ## write marker.txt
\t@echo "$(MSG)" > marker.txt
other:
\t@echo other; sleep $(SECS)
.PHONY: ok fail slow tree chatty marker other
"""


def remaking_makefile(secs: int) -> str:
    """An included makefile with a rule, which GNU make remakes (appending to remade.log) even
    when only asked for its database; and `slow`, a build of `secs` seconds."""
    return ("deps.mk: Makefile\n"
            "\t@echo remade >> remade.log; echo '# deps' > deps.mk\n"
            "-include deps.mk\n"
            f"slow:\n\t@echo start; sleep {secs}; echo done\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """One gunicorn-served app: its URL, process and log file."""

    def __init__(self, module: str, env: dict, log_path: str, port: int | None = None):
        self.module, self.env, self.log_path = module, env, log_path
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> Proc:
        env = {**os.environ, **self.env}
        code = f"from {self.module}.serve import main; main()"
        self.log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, "--bind", f"127.0.0.1:{self.port}"], env=env,
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            try:
                self.wait_ready()
            except BaseException:  # not ready (or interrupted): not left running either
                self.stop()
                raise
        return self

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.module} exited {self.proc.returncode}:\n{self.output()}")
            try:
                requests.get(self.url + "/healthz", timeout=1)
                return
            except requests.RequestException:
                time.sleep(0.05)
        raise RuntimeError(f"{self.module} did not start:\n{self.output()}")

    def output(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()[-5000:]

    def settled_output(self) -> str:
        """output() once the lines held back (worker/deferred_log.py) have been written: for a
        test that looks for what must *not* be there."""
        time.sleep(5 * deferred_log.DELAY)
        return self.output()

    def children(self) -> list[int]:
        """Pids of the gunicorn worker processes (children of the master)."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the master and its workers, but not the make groups (they have their own).
        The master goes first: a master that outlived its worker would fork a new one."""
        for pid in [self.proc.pid, *self.children()]:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if sig == signal.SIGKILL:
            self.proc.wait(10)

    def terminate(self) -> None:
        """Ask the whole group to stop (SIGTERM); `stop()` then waits for it."""
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        if getattr(self, "log", None):
            self.log.close()


def wait_for(predicate, timeout: float = 10, interval: float = 0.05, what: str = "condition"):
    """Poll until `predicate()` is truthy; returns its value, or fails naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def pids_of(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]
