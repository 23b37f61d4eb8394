"""Several triggers: queueing, coalescing, parallel workers, one build of a target at a time."""

import threading

from .procs import wait_for


def test_a_busy_worker_queues_the_next_job_until_it_is_free(stack):
    stack.server([stack.worker()])
    first = stack.trigger("slow", vars={}, timeout=30)["id"]
    stack.wait_state(first, "running")
    second = stack.trigger("ok")["id"]
    assert stack.job(second)["state"] == "queued"
    stack.http.delete(f"{stack.url}/jobs/{first}", timeout=10)
    assert stack.wait_state(second)["state"] == "succeeded"


def test_identical_triggers_while_queued_coalesce_into_one_job(stack):
    stack.server([stack.worker()])
    running = stack.trigger("slow")["id"]
    stack.wait_state(running, "running")
    answers = [stack.trigger("ok") for _ in range(10)]
    assert len({a["id"] for a in answers}) == 1
    assert [a["coalesced"] for a in answers] == [False] + [True] * 9
    different = stack.trigger("ok", vars={})  # same vars: still the same job
    assert different["id"] == answers[0]["id"]
    stack.http.delete(f"{stack.url}/jobs/{running}", timeout=10)
    assert stack.wait_state(answers[0]["id"])["state"] == "succeeded"
    assert len(stack.get("/jobs?target=ok")["jobs"]) == 1


def test_a_joining_trigger_is_answered_with_the_queued_job_as_it_is(stack):
    """Answers to triggers that join a queued job are made once per job: each is the job as
    GET /jobs/<id> shows it, with `"coalesced": true`, for every job a burst joins."""
    stack.server([stack.worker()])
    running = stack.trigger("slow")["id"]
    stack.wait_state(running, "running")
    for target in ("ok", "other"):
        first = stack.post(json={"target": target, "notify": "http://127.0.0.1:9/x"})
        joins = [stack.post(json={"target": target}) for _ in range(3)]
        queued = stack.job(first.json()["id"])
        assert first.json() == {**queued, "coalesced": False}
        for join in joins:
            assert join.status_code == 202 and join.json() == {**queued, "coalesced": True}
            assert join.headers["Location"] == f"/jobs/{queued['id']}"
            assert join.headers["Content-Type"] == "application/json"
    stack.http.delete(f"{stack.url}/jobs/{running}", timeout=10)


def test_concurrent_triggers_coalesce_too(stack):
    stack.server([stack.worker()])
    running = stack.trigger("slow")["id"]
    stack.wait_state(running, "running")
    ids, lock = [], threading.Lock()

    def trigger():
        job = stack.trigger("other", vars={})
        with lock:
            ids.append(job["id"])

    threads = [threading.Thread(target=trigger) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 20 and len(set(ids)) == 1
    stack.http.delete(f"{stack.url}/jobs/{running}", timeout=10)


def test_two_workers_build_different_targets_in_parallel(stack):
    w1 = stack.worker(stack.workspace("a"), name="a")
    w2 = stack.worker(stack.workspace("b"), name="b")
    stack.server([w1, w2])
    a = stack.trigger("slow")["id"]
    b = stack.trigger("other")["id"]
    ja, jb = stack.wait_state(a, "running"), stack.wait_state(b, "running")
    assert {ja["worker"], jb["worker"]} == {w1.url, w2.url}
    for job_id in (a, b):
        stack.http.delete(f"{stack.url}/jobs/{job_id}", timeout=10)


def test_the_same_target_never_runs_on_two_workers_at_once(stack):
    w1 = stack.worker(stack.workspace("a"), name="a")
    w2 = stack.worker(stack.workspace("b"), name="b")
    stack.server([w1, w2])
    first = stack.trigger("slow", vars={}, timeout=30)["id"]
    second = stack.trigger("slow", vars={}, timeout=29)["id"]  # not identical: not coalesced
    third = stack.trigger("ok")["id"]  # may pass the waiting `slow`
    assert stack.wait_state(third)["state"] == "succeeded"
    assert stack.job(first)["state"] == "running"
    assert stack.job(second)["state"] == "queued"
    stack.http.delete(f"{stack.url}/jobs/{first}", timeout=10)
    stack.wait_state(second, "running")
    stack.http.delete(f"{stack.url}/jobs/{second}", timeout=10)


def test_jobs_can_be_sent_to_a_named_worker(stack):
    w1 = stack.worker(stack.workspace("a"), name="a")
    w2 = stack.worker(stack.workspace("b"), name="b")
    stack.server([w1, w2])
    for _ in range(3):
        job = stack.post(json={"target": "ok", "worker": w2.url, "wait": True}).json()
        assert job["worker"] == w2.url and job["requested_worker"] == w2.url
    unknown = stack.post(json={"target": "ok", "worker": "elsewhere"})
    assert unknown.status_code == 400 and "unknown worker" in unknown.json()["error"]


def test_history_lists_newest_first_with_filters_and_pages(stack):
    stack.server([stack.worker()])
    ids = [stack.post(json={"target": t, "wait": True}).json()["id"]
           for t in ("ok", "fail", "ok", "ok")]
    page = stack.get("/jobs?limit=2")
    assert [j["id"] for j in page["jobs"]] == ids[:1:-1]
    rest = stack.get(f"/jobs?limit=2&before={page['next_before']}")
    assert [j["id"] for j in rest["jobs"]] == ids[1::-1]
    assert [j["id"] for j in stack.get("/jobs?state=failed")["jobs"]] == [ids[1]]
    assert len(stack.get("/jobs?target=ok")["jobs"]) == 3


def test_workers_sharing_a_workspace_take_turns(stack):
    ws = stack.workspace("shared")
    w1, w2 = stack.worker(ws, name="a"), stack.worker(ws, name="b")
    stack.server([w1, w2])
    a = stack.trigger("slow")["id"]
    stack.wait_state(a, "running")
    b = stack.trigger("other")["id"]  # another target, but the workspace is locked
    wait_for(lambda: stack.job(b)["state"] == "queued", what="b to stay queued")
    stack.http.delete(f"{stack.url}/jobs/{a}", timeout=10)
    assert stack.wait_state(b, "running")["state"] == "running"
    stack.http.delete(f"{stack.url}/jobs/{b}", timeout=10)


def test_with_target_locks_a_shared_workspace_builds_different_targets_at_once(stack):
    ws = stack.workspace("shared")
    w1 = stack.worker(ws, name="a", WORKER_LOCK="target")
    w2 = stack.worker(ws, name="b", WORKER_LOCK="target")
    stack.server([w1, w2])
    a, b = stack.trigger("slow")["id"], stack.trigger("other")["id"]
    ja, jb = stack.wait_state(a, "running"), stack.wait_state(b, "running")
    assert ja["worker"] != jb["worker"]
    for job_id in (a, b):
        stack.http.delete(f"{stack.url}/jobs/{job_id}", timeout=10)


def test_a_worker_whose_workspace_something_else_locks_is_asked_again_once_a_second(stack):
    """A build the controller does not know of (another stack on the workspace, a replica's)
    holds the workspace lock: the worker refuses starts as busy, and the controller asks it
    again after BUSY_BACKOFF (1 s), not at once and for ever (it asked thousands of times a
    second: each refusal's release undid the back-off). The job runs once the lock is free."""
    import fcntl
    import os
    import time

    ws = stack.workspace()
    access = stack.tmp / "access.log"
    stack.server([stack.worker(ws, WORKER_ACCESS_LOG=str(access))])
    fd = os.open(ws, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as the worker's builds take it
        job = stack.trigger("ok")["id"]
        time.sleep(3)
        assert stack.job(job)["state"] == "queued"
    finally:
        os.close(fd)
    assert stack.wait_state(job)["state"] == "succeeded"
    starts = access.read_text().count('"POST /runs ')
    assert 2 <= starts <= 8, f"{starts} starts asked in about 3 s"


def test_a_target_locked_from_outside_keeps_only_that_target_waiting(stack):
    """WORKER_LOCK=target: a build the controller did not start holds one target's lock. The
    worker refuses that target as busy and the controller asks again later, while other
    targets still build on it; the held one runs once its lock is free."""
    import fcntl
    import hashlib
    import os
    import time

    ws = stack.workspace()
    stack.server([stack.worker(ws, WORKER_LOCK="target")])
    locks = os.path.join(ws, ".maketrigger", "locks")
    os.makedirs(locks, exist_ok=True)
    held = os.path.join(locks, hashlib.sha256(b"slow").hexdigest()[:32] + ".lock")
    fd = os.open(held, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as another worker's build of `slow` takes it
        slow = stack.trigger("slow")["id"]
        time.sleep(1.5)  # refused at least once: the worker is in its back-off for `slow`
        assert stack.job(slow)["state"] == "queued"
        for _ in range(3):
            assert stack.trigger("ok", wait=30)["state"] == "succeeded"
        assert stack.job(slow)["state"] == "queued"
    finally:
        os.close(fd)
    assert stack.wait_state(slow, "running")["state"] == "running"
    stack.http.delete(f"{stack.url}/jobs/{slow}", timeout=10)
