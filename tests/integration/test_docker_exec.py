"""docker:// workers against a real Docker engine: a real controller process on this machine
builds through docker exec in containers that have make and nothing of maketrigger (no Python,
no agent).

Without a Docker engine these tests are skipped with the reason, except under CI=true, where
that is a failure (as in tests/e2e).
"""

from __future__ import annotations

import io
import os
import subprocess
import time
import uuid
from pathlib import Path

import docker
import docker.errors
import pytest
import requests

from .procs import Proc, remaking_makefile, wait_for

ROOT = Path(__file__).resolve().parents[2]
STANDIN_IMAGE = "maketrigger-base:bookworm"
TEST_LABEL = "maketrigger.test"
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
OWNER = (4321, 4322)  # the workspace's owner: builds run as them
# Python out of the image: whatever runs make in there, it is not an agent of ours.
WITHOUT_PYTHON = """\
FROM {image}
RUN pkgs=$(dpkg-query -W -f '${{Package}}\\n' | grep -E '^(lib)?python3' || true); \\
    if [ -n "$pkgs" ]; then apt-get purge -y --auto-remove $pkgs >/dev/null; fi; \\
    ! command -v python3
"""

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def engine(docker_client):
    return docker_client


@pytest.fixture(scope="module")
def make_only_image(engine):
    """Dockerfile.make-only on the stand-in Debian base (or E2E_BASE_IMAGE), without Python.
    Removed afterwards, with the stand-in if this fixture had to build it."""
    tag = f"maketrigger-make-only:it-{uuid.uuid4().hex[:8]}"
    base = os.environ.get("E2E_BASE_IMAGE") or STANDIN_IMAGE
    made_base = False
    try:
        try:
            engine.images.get(base)
        except docker.errors.ImageNotFound:
            if base != STANDIN_IMAGE:
                raise
            made_base = True
            subprocess.run(["scripts/base-image.sh", "build", base], cwd=ROOT, check=True,
                           capture_output=True, timeout=1800)
        engine.images.build(path=str(ROOT), dockerfile="Dockerfile.make-only", rm=True,
                            buildargs={"BASE_IMAGE": base}, tag=f"{tag}-with-base")
        engine.images.build(fileobj=io.BytesIO(WITHOUT_PYTHON.format(image=f"{tag}-with-base")
                                               .encode()), rm=True, tag=tag)
        yield tag
    finally:
        for image in [tag, f"{tag}-with-base", *([base] if made_base else [])]:
            try:
                engine.images.remove(image, force=True)
            except docker.errors.ImageNotFound:
                pass


@pytest.fixture
def containers(engine, make_only_image):
    """Start toolchain containers (`sleep infinity`) on a workspace; all removed afterwards."""
    made = []

    def start(workspace: str, name: str | None = None, labels: dict | None = None, **kw):
        container = engine.containers.run(
            make_only_image, ["sleep", "infinity"], detach=True,
            name=name or f"mt-it-{uuid.uuid4().hex[:8]}",
            volumes={workspace: {"bind": "/workspace", "mode": "rw"}},
            labels={TEST_LABEL: "1", **(labels or {})}, **kw)
        made.append(container)
        return container

    yield start
    for container in made:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass


@pytest.fixture
def workspace(stack) -> str:
    """The integration tests' makefile in a folder owned by OWNER, not by root."""
    path = stack.workspace()
    for p in [Path(path), *Path(path).rglob("*")]:
        os.chown(p, *OWNER)
    return path


def controller(stack, *entries: str, **env) -> Proc:
    """A controller whose workers are these docker:// entries (no token: no HTTP workers)."""
    settings = {"TRIGGER_WORKERS": ",".join(entries), "TRIGGER_DB": str(stack.tmp / "trigger.db"),
                "WORKER_INSECURE": "1", "TRIGGER_HEALTH_INTERVAL": "0.5",
                "TRIGGER_RESOLVE_INTERVAL": "1", "TRIGGER_LOST_AFTER": "5"}
    settings.update({k: str(v) for k, v in env.items()})
    proc = Proc("trigger_server", settings, str(stack.tmp / f"server{len(stack.procs)}.log"))
    stack.procs.append(proc.start())
    stack.url = proc.url
    return proc


def workers(stack) -> list[dict]:
    return stack.get("/workers")["workers"]


def healthy(stack, count: int = 1) -> list[dict]:
    return wait_for(lambda: len(found := [w for w in workers(stack) if w["healthy"]]) == count
                    and found, timeout=20, what=f"{count} healthy docker worker(s)")


def processes(container) -> list[str]:
    """The command lines running in the container, as `docker top` shows them."""
    top = container.top()
    column = top["Titles"].index("CMD")
    return [p[column] for p in top["Processes"] or []]


def build_gone(container) -> bool:
    return processes(container) == ["sleep infinity"]


def test_a_container_with_only_make_builds_as_the_workspace_owner(stack, workspace, containers):
    box = containers(workspace, healthcheck={"test": ["CMD", "true"], "interval": 500_000_000})
    assert box.exec_run(["sh", "-c", "command -v python3"]).exit_code != 0
    controller(stack, f"docker://{box.name}?vars=MSG")
    wait_for(lambda: workers(stack)[0]["health"] == "healthy", timeout=20,
             what="the container's own health check")

    shown = healthy(stack)[0]
    assert shown | {"jobs": []} == {
        "url": f"docker://{box.name}", "name": box.name, "healthy": True, "busy": False,
        "jobs": [], "lock": "workspace", "last_error": None, "container": box.name,
        "state": "running", "health": "healthy"}
    described = {t["name"]: t["description"] for t in stack.get("/targets")["targets"]}
    assert described["marker"] == "write marker.txt"

    resp = stack.post(json={"target": "marker", "vars": {"MSG": "hello"}, "wait": 30})

    assert resp.status_code == 200, resp.text
    job = resp.json()
    assert job["state"] == "succeeded" and job["exit_code"] == 0
    assert job["worker"] == f"docker://{box.name}"
    marker = Path(workspace) / "marker.txt"
    assert marker.read_text() == "hello\n"
    assert (marker.stat().st_uid, marker.stat().st_gid) == OWNER
    assert stack.log(job["id"]).startswith("+ make -C /workspace MSG=hello -- marker\n")


def test_a_failing_target_reports_makes_exit_status(stack, workspace, containers):
    box = containers(workspace)
    controller(stack, f"docker://{box.name}")
    healthy(stack)

    resp = stack.post(json={"target": "fail", "wait": 30})

    assert resp.status_code == 422, resp.text
    job = resp.json()
    assert (job["state"], job["exit_code"]) == ("failed", 2)
    assert job["error"] == "make ended with exit status 2"
    text = stack.log(job["id"])
    assert "about to fail" in text
    assert text.endswith("*** maketrigger: failed: make ended with exit status 2\n")


def test_a_workdir_without_a_makefile_is_named_as_the_reason(stack, containers, tmp_path):
    """A mistyped or unmounted workspace: make prints a database without reading any makefile,
    which looked like a makefile without targets ("target site is not defined")."""
    empty = tmp_path / "empty"
    empty.mkdir()
    os.chown(empty, *OWNER)
    box = containers(str(empty))
    controller(stack, f"docker://{box.name}")
    healthy(stack)

    resp = stack.post(json={"target": "site", "wait": 30})

    assert 400 <= resp.status_code < 500, resp.text
    assert ("there is no makefile (GNUmakefile, makefile, Makefile) in /workspace: is the right "
            "folder mounted there?") in resp.json()["error"]


def test_the_input_rules_of_workers_hold(stack, workspace, containers):
    box = containers(workspace)
    controller(stack, f"docker://{box.name}?targets=ok&targets=fail")
    healthy(stack)

    refused = stack.post(json={"target": "ok", "vars": {"MSG": "x"}, "wait": 30})
    listed = stack.post(json={"target": "marker", "wait": 30})

    # Refused up front (400, no job), as for agent workers: the job failed (422) before.
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == ("variable MSG refused: this worker accepts no "
                                       "variables (the entry's vars= is empty)")
    assert listed.status_code == 400
    assert "not a target the worker offers" in listed.json()["error"]
    assert stack.get("/jobs")["jobs"] == []
    assert not (Path(workspace) / "marker.txt").exists()


def test_cancel_ends_the_whole_build_inside_the_container(stack, workspace, containers):
    box = containers(workspace)
    controller(stack, f"docker://{box.name}")
    healthy(stack)
    job_id = stack.trigger("tree")["id"]
    wait_for(lambda: "tree started" in stack.log(job_id), timeout=20, what="the tree to start")
    assert sum(cmd.startswith("sleep 30") for cmd in processes(box)) == 2

    assert requests.delete(f"{stack.url}/jobs/{job_id}", timeout=10).status_code == 202

    job = stack.wait_state(job_id)
    assert (job["state"], job["error"]) == ("cancelled", "cancelled on request")
    wait_for(lambda: build_gone(box), what="no process of the build left (docker top)")
    assert box.exec_run(["sh", "-c", "ls /tmp/maketrigger-*"]).exit_code != 0  # pid file gone


def test_a_build_over_its_time_limit_is_stopped(stack, workspace, containers):
    box = containers(workspace)
    controller(stack, f"docker://{box.name}?timeout=60")
    healthy(stack)

    too_long = stack.post(json={"target": "slow", "timeout": 61})
    job = stack.wait_state(stack.trigger("slow", timeout=1)["id"])

    assert too_long.status_code == 400 and "at most 60 s" in too_long.json()["error"]
    assert (job["state"], job["error"]) == ("failed", "timed out after 1 s")
    wait_for(lambda: build_gone(box), what="no process of the build left (docker top)")
    # make is signalled before its group: else GNU make 4.3 mostly ended "wait: No child
    # processes" with exit status 2 (see worker/runner.py Runner._stop)
    text = stack.log(job["id"])
    assert "Terminated" in text and "No child processes" not in text, text
    assert job["exit_code"] is None


def test_a_stopped_container_is_started_and_built(stack, workspace, containers):
    box = containers(workspace)
    box.stop(timeout=1)
    controller(stack, f"docker://{box.name}")
    assert healthy(stack)[0]["state"] == "exited"

    resp = stack.post(json={"target": "ok", "wait": 30})

    assert resp.status_code == 200, resp.text
    box.reload()
    assert box.status == "running"
    assert "building ok" in stack.log(resp.json()["id"])


def test_with_start_never_a_stopped_container_is_left_alone(stack, workspace, containers):
    box = containers(workspace)
    box.stop(timeout=1)
    controller(stack, f"docker://{box.name}?start=never")
    wait_for(lambda: "start=never" in (workers(stack)[0]["last_error"] or ""), timeout=20,
             what="the worker to say why it is not used")

    resp = stack.post(json={"target": "ok", "wait": 2})

    assert resp.status_code == 202 and resp.json()["state"] == "queued"
    box.reload()
    assert box.status == "exited"
    box.start()
    assert stack.wait_state(resp.json()["id"], timeout=20)["state"] == "succeeded"


def test_a_missing_container_fails_the_job_naming_it(stack, engine):
    name = f"mt-it-missing-{uuid.uuid4().hex[:8]}"
    controller(stack, f"docker://{name}")

    resp = stack.post(json={"target": "ok", "wait": 30})

    assert resp.status_code == 422, resp.text
    assert resp.json()["error"] == (f"rejected by the worker: docker://{name}: no container or "
                                    f"compose service named '{name}'")
    [shown] = workers(stack)
    assert (shown["healthy"], shown["state"]) == (False, "missing")
    assert name in shown["last_error"]


def test_an_unreachable_docker_daemon_fails_the_job_saying_so(stack, tmp_path):
    # No engine needed: the controller is pointed at a socket that does not exist.
    socket = f"unix://{tmp_path}/no-docker.sock"
    controller(stack, "docker://rbuilder", DOCKER_HOST=socket)

    resp = stack.post(json={"target": "ok", "wait": 30})

    assert resp.status_code == 422, resp.text
    assert f"no Docker socket at {socket}" in resp.json()["error"]
    assert workers(stack)[0]["state"] == "unreachable"


def test_a_build_left_by_a_killed_controller_is_stopped_and_the_job_lost(stack, workspace,
                                                                        containers):
    box = containers(workspace)
    entry = f"docker://{box.name}?vars=SECS&kill_grace=2"
    first = controller(stack, entry)
    healthy(stack)
    job_id = stack.trigger("slow", vars={"SECS": "300"})["id"]
    wait_for(lambda: "start" in stack.log(job_id), timeout=20, what="make to start")

    first.kill()  # SIGKILL: no chance to stop the build
    assert any(cmd.startswith("make ") for cmd in processes(box))
    controller(stack, entry)

    job = stack.wait_state(job_id, timeout=30)
    assert job["state"] == "lost"
    assert "the controller restarted during the build" in job["error"]
    assert "was stopped" in job["error"]
    wait_for(lambda: build_gone(box), what="no process of the build left (docker top)")


def test_every_replica_of_a_scaled_compose_service_builds(stack, containers, make_only_image):
    from tests.e2e.stack import compose_command

    targets = ("one", "two", "three")  # each takes SECS seconds
    workspace = stack.workspace("scaled", makefile="".join(
        f"{t}:\n\t@echo {t}; sleep $(SECS)\n" for t in targets))

    project = f"mtit{uuid.uuid4().hex[:8]}"
    env_file = stack.tmp / "empty.env"
    env_file.write_text("")
    env = {**os.environ, "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid
                                           if os.path.exists("/var/run/docker.sock") else 0),
           "DOCKER_EXEC_IMAGE": make_only_image, "WORKSPACE": workspace}
    compose = [*compose_command(), "--env-file", str(env_file), "-p", project,
               "-f", str(ROOT / "docker-compose.yml"),
               "-f", str(ROOT / "docker-compose.docker-exec.yml")]
    # A replica of a service of the same name in another project must not be used.
    containers(workspace, labels={PROJECT_LABEL: f"{project}other", SERVICE_LABEL: "rbuilder"})
    try:
        subprocess.run([*compose, "up", "-d", "--no-deps", "--scale", "rbuilder=3", "rbuilder"],
                       cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
        controller(stack, f"docker://rbuilder?project={project}&vars=SECS")
        shown = healthy(stack, 3)
        assert {w["name"] for w in shown} == {"rbuilder"}
        assert all(w["container"].startswith(project) for w in shown)

        ids = [stack.trigger(t, vars={"SECS": "5"})["id"] for t in targets]
        jobs = [stack.wait_state(job_id, timeout=30) for job_id in ids]
    finally:
        subprocess.run([*compose, "down", "--volumes", "--timeout", "1"], cwd=ROOT, env=env,
                       capture_output=True, timeout=120)

    assert [j["state"] for j in jobs] == ["succeeded"] * 3
    assert {j["worker"] for j in jobs} == {w["url"] for w in shown}
    assert max(j["started_at"] for j in jobs) < min(j["finished_at"] for j in jobs)


def test_a_large_fast_log_arrives_whole(stack, containers):
    # 30 MB through the whole controller, into the store.
    lines = 300_000
    workspace = stack.workspace("big", makefile=(
        f"big:\n\t@head -c {lines * 99} /dev/zero | tr '\\0' x | fold -w 99\n"))
    box = containers(workspace)
    controller(stack, f"docker://{box.name}")
    healthy(stack)

    job = stack.post(json={"target": "big", "wait": 120}).json()

    assert job["state"] == "succeeded" and not job["log_truncated"]
    text = stack.log(job["id"])
    assert text.count("x") == lines * 99  # no other line of the log has an x
    assert "maketrigger" not in text.split("\n", 1)[1]  # no drop marker after the `+ make` line


def test_output_waits_for_a_reader_that_pauses_and_arrives_whole(stack, containers):
    from trigger_server import docker_runs, docker_workers

    lines = 400_000  # 40 MB: more than the 16 MB the transport keeps unread
    workspace = stack.workspace("flood", makefile=(
        f"flood:\n\t@head -c {lines * 99} /dev/zero | tr '\\0' x | fold -w 99\n"))
    box = containers(workspace)
    transport = docker_runs.DockerTransport()
    [worker] = docker_workers.resolve(f"docker://{box.name}")
    transport.start_run(worker, "flood-1", "flood", {}, None)
    time.sleep(3)  # make floods while nobody reads

    offset, text = 0, bytearray()
    while True:
        for chunk in transport.stream_log(worker, "flood-1", offset):
            text += chunk
            offset += len(chunk)
        run = transport.get_run(worker, "flood-1")
        if run["state"] != "running" and run["log_size"] <= offset:
            break

    assert run["state"] == "succeeded"
    assert text.count(b"x") == lines * 99


REMAKING = remaking_makefile(12)


def test_a_containers_targets_are_not_read_beside_its_build(stack, containers):
    """Reading the targets (`make -pRrq`) remakes included makefiles that have a rule: while a
    build runs in the container, the list read before is kept instead, and a target added to
    the makefile meanwhile is built once the container is free."""
    ws = stack.workspace(makefile=REMAKING)
    for p in [Path(ws), *Path(ws).rglob("*")]:
        os.chown(p, *OWNER)
    box = containers(ws)
    controller(stack, f"docker://{box.name}")
    healthy(stack)
    job_id = stack.trigger("slow")["id"]
    wait_for(lambda: "start" in stack.log(job_id), timeout=30, what="make to start")
    remade = Path(ws) / "remade.log"
    before = remade.read_text()
    with open(f"{ws}/Makefile", "a") as f:
        f.write("fresh:\n\t@echo fresh built\n")
    time.sleep(5.5)  # past the container's list's cache (CACHE_TTL) and the controller's
    assert "slow" in [t["name"] for t in stack.get("/targets")["targets"]]
    assert remade.read_text() == before, "deps.mk was remade beside the build"
    fresh = stack.post(json={"target": "fresh", "wait": 60})
    assert fresh.status_code == 200, fresh.text
    assert stack.job(job_id)["state"] == "succeeded"
    assert "fresh built" in stack.log(fresh.json()["id"])
