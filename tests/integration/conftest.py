from __future__ import annotations

import os

import pytest
import requests
from urllib3.util.retry import Retry

from .procs import MAKEFILE, TOKEN, Proc, wait_for


class Stack:
    """Workers and a controller, started on demand by a test, all stopped at its end."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.procs: list[Proc] = []
        self.http = requests.Session()
        # A GET on a kept-alive connection that the server closed just then (after a request
        # whose body it did not read, on a loaded machine) is sent again once, as browsers
        # and curl do; POSTs never are.
        self.http.mount("http://", requests.adapters.HTTPAdapter(max_retries=Retry(
            total=1, connect=0, read=1, status=0, other=0, allowed_methods={"GET"},
            raise_on_status=False)))

    def workspace(self, name: str = "ws", makefile: str = MAKEFILE) -> str:
        path = self.tmp / name
        path.mkdir(exist_ok=True)
        (path / "Makefile").write_text(makefile)
        return str(path)

    def worker(self, workdir: str | None = None, name: str | None = None, start=True,
               **env) -> Proc:
        name = name or f"worker{len(self.procs)}"
        settings = {"WORKER_WORKDIR": workdir or self.workspace(), "TRIGGER_WORKER_TOKEN": TOKEN,
                    "WORKER_STATE_DIR": str(self.tmp / f"{name}-state"),
                    "WORKER_KILL_GRACE": "2"}
        settings.update({k: str(v) for k, v in env.items()})
        proc = Proc("worker", settings, str(self.tmp / f"{name}.log"))
        self.procs.append(proc)
        return proc.start() if start else proc

    def server(self, workers: list[Proc], db: str | None = None, port: int | None = None,
               **env) -> Proc:
        settings = {"TRIGGER_WORKERS": ",".join(w.url for w in workers),
                    "TRIGGER_DB": db or str(self.tmp / "trigger.db"),
                    "TRIGGER_WORKER_TOKEN": TOKEN, "TRIGGER_HEALTH_INTERVAL": "0.5",
                    "TRIGGER_RESOLVE_INTERVAL": "1", "TRIGGER_LOST_AFTER": "5"}
        settings.update({k: str(v) for k, v in env.items()})
        if "TRIGGER_API_TOKEN" in env:
            self.http.headers["Authorization"] = f"Bearer {env['TRIGGER_API_TOKEN']}"
        proc = Proc("trigger_server", settings, str(self.tmp / f"server{len(self.procs)}.log"),
                    port=port).start()
        self.procs.append(proc)
        self.url = proc.url
        wait_for(lambda: all(w["healthy"] for w in self.get("/workers")["workers"]),
                 what="workers to be healthy")
        return proc

    # --- HTTP helpers ----------------------------------------------------------------------
    def get(self, path: str, **kw):
        resp = self.http.get(self.url + path, timeout=30, **kw)
        resp.raise_for_status()
        return resp.json()

    def post(self, path: str = "/jobs", **kw) -> requests.Response:
        return self.http.post(self.url + path, timeout=60, **kw)

    def trigger(self, target: str, **fields) -> dict:
        resp = self.post(json={"target": target, **fields})
        assert resp.status_code in (200, 202, 409, 422, 502), resp.text
        return resp.json()

    def job(self, job_id: int) -> dict:
        return self.get(f"/jobs/{job_id}")

    def wait_state(self, job_id: int, *states: str, timeout: float = 15) -> dict:
        states = states or ("succeeded", "failed", "cancelled", "lost")
        return wait_for(lambda: (j := self.job(job_id))["state"] in states and j,
                        timeout=timeout, what=f"job {job_id} to be {'/'.join(states)}")

    def log(self, job_id: int) -> str:
        resp = self.http.get(f"{self.url}/jobs/{job_id}/log", timeout=30)
        resp.raise_for_status()
        return resp.text

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.stop()


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    yield s
    s.close()


@pytest.fixture(scope="module")
def module_stack(tmp_path_factory):
    """One stack for a whole module of tests that only read or are refused."""
    s = Stack(tmp_path_factory.mktemp("stack"))
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
