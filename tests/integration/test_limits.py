"""Resource limits: a huge log stays bounded in memory and on disk; a locked database is a
clean 503, not a crash; a body over TRIGGER_MAX_BODY is a 413, chunked or not."""

import hashlib
import hmac
import json
import os
import re
import socket
import sqlite3
import subprocess
import threading
import time

import pytest
import requests

from .procs import wait_for

BIG = """\
big: ## print about 200 MB
\t@head -c 198000000 /dev/zero | tr '\\\\0' 'x' | fold -w 99
"""


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_a_200_mb_log_streams_with_bounded_memory_and_a_capped_store(stack):
    w = stack.worker(stack.workspace(makefile=BIG))
    server = stack.server([w], TRIGGER_MAX_LOG_BYTES=20_000_000)
    (wpid,), (spid,) = w.children(), server.children()
    before = {"worker": rss_kib(wpid), "controller": rss_kib(spid)}
    peak = dict(before)
    job_id = stack.trigger("big")["id"]
    followed = []  # a reader following the log live must get all of it, to the last byte

    def follow():
        with requests.get(f"{stack.url}/jobs/{job_id}/log", params={"follow": 1}, stream=True,
                          timeout=120) as resp:
            followed.append(sum(len(c) for c in resp.iter_content(1 << 16)))

    reader = threading.Thread(target=follow)
    reader.start()
    started = time.monotonic()
    while stack.job(job_id)["state"] in ("queued", "running") and time.monotonic() - started < 300:
        peak = {"worker": max(peak["worker"], rss_kib(wpid)),
                "controller": max(peak["controller"], rss_kib(spid))}
        time.sleep(0.1)
    job = stack.wait_state(job_id, timeout=10)
    took = time.monotonic() - started
    reader.join(120)
    assert followed == [job["log_size"]]
    assert job["state"] == "succeeded"
    assert job["log_truncated"] and job["log_size"] < 20_001_000
    tail = requests.get(f"{stack.url}/jobs/{job_id}/log", params={"offset": 19_999_000},
                        timeout=30).text
    assert "log truncated here" in tail
    # Plain reads of the whole stored log by clients that read slowly: the controller held the
    # whole log (twice) per request; it holds a piece at a time.
    quiet = rss_kib(spid)
    readers = [requests.get(f"{stack.url}/jobs/{job_id}/log", stream=True, timeout=30)
               for _ in range(6)]
    try:
        for resp in readers:
            assert resp.status_code == 200 and len(next(resp.iter_content(1 << 16))) == 1 << 16
        time.sleep(0.5)
        held = rss_kib(spid) - quiet
    finally:
        for resp in readers:
            resp.close()
    assert held < 30 * 1024, f"6 slow plain reads of a 20 MB log grew the controller {held} KiB"
    growth = {k: (peak[k] - before[k]) // 1024 for k in peak}
    print(f"\n200 MB log: {took:.1f} s end to end ({200 / took:.0f} MB/s); RSS growth "
          f"worker {growth['worker']} MiB, controller {growth['controller']} MiB")
    assert growth["worker"] < 100 and growth["controller"] < 100  # bounded, far below 200 MB


SEQ = """\
seq: ## print the numbers up to 4,000,000 (about 31 MB)
\t@seq 1 4000000
"""


def test_a_large_log_is_stored_byte_for_byte_while_read_live(stack):
    """Past its first megabytes a log is stored by a thread of its own while the follower reads
    on (log_writer.py): every byte still arrives once and in order."""
    stack.server([stack.worker(stack.workspace(makefile=SEQ))])
    expected = subprocess.run(["seq", "1", "4000000"], capture_output=True, check=True).stdout
    job_id = stack.trigger("seq")["id"]
    with requests.get(f"{stack.url}/jobs/{job_id}/log", params={"follow": 1}, stream=True,
                      timeout=120) as resp:
        live = b"".join(resp.iter_content(1 << 16))
    job = stack.wait_state(job_id, "succeeded", timeout=60)
    stored = requests.get(f"{stack.url}/jobs/{job_id}/log", timeout=60).content
    # The worker's "+ make ..." line, and make's "make[N]: Entering directory" lines (N when the
    # tests themselves run under make, as `make test` does).
    ours = [line for line in stored.splitlines(keepends=True)
            if line.startswith(b"+ make") or re.match(rb"make(\[\d+\])?: ", line)]
    assert ours[0].startswith(b"+ make") and len(ours) == 3
    assert b"".join(line for line in stored.splitlines(keepends=True)
                    if line not in ours) == expected
    assert live == stored and job["log_size"] == len(stored)


def test_a_locked_database_answers_503_and_recovers(stack):
    stack.server([stack.worker()], TRIGGER_DB_BUSY_TIMEOUT=0.5)
    db = sqlite3.connect(stack.tmp / "trigger.db", isolation_level=None, timeout=5)
    db.execute("BEGIN EXCLUSIVE")
    try:
        resp = stack.post(json={"target": "ok"})
        assert resp.status_code == 503
        assert "database" in resp.json()["error"]
    finally:
        db.execute("ROLLBACK")
        db.close()
    ok = stack.post(json={"target": "ok", "wait": True})
    assert ok.status_code == 200
    assert len(stack.get("/jobs")["jobs"]) == 1  # the refused trigger left nothing behind


SLOW_START = """\
PARSED := $(shell sleep 2)
work:
\t@echo working; sleep 1; echo worked
"""


def test_a_database_locked_when_the_worker_accepts_a_start_does_not_strand_the_job(stack):
    """The worker takes 2 s to read this makefile, so a start is on its way that long; the
    database is locked over the moment it is accepted. The job stayed queued, unfollowed, while
    make ran, until the controller restarted: it is followed once the database works again."""
    ws = stack.workspace("slowstart", makefile=SLOW_START)
    stack.server([stack.worker(ws)], TRIGGER_DB_BUSY_TIMEOUT=0.5)
    stack.get("/targets")  # listed: the trigger need not wait for a listing
    os.utime(os.path.join(ws, "Makefile"))  # the worker reads it again, inside the start
    job_id = stack.trigger("work")["id"]
    wait_for(lambda: stack.job(job_id)["worker"], timeout=10, what="the job to be claimed")
    db = sqlite3.connect(stack.tmp / "trigger.db", isolation_level=None, timeout=5)
    db.execute("BEGIN IMMEDIATE")
    try:
        time.sleep(3.5)  # the worker accepted the start meanwhile (2 s)
    finally:
        db.execute("ROLLBACK")
        db.close()
    job = stack.wait_state(job_id, timeout=30)
    assert job["state"] == "succeeded", job
    assert "worked" in stack.log(job_id)


MEGABYTE = """\
mb: ## print 1 MB
\t@head -c 1000000 /dev/zero | tr '\\\\0' 'y' | fold -w 99
ok:
\t@echo ok
"""


def test_a_full_disk_answers_503_and_nothing_is_corrupt(stack, tmp_path):
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("needs root to mount a small tmpfs")
        pytest.skip("needs root to mount a small tmpfs for the database")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], check=True)
    try:
        stack.server([stack.worker(stack.workspace(makefile=MEGABYTE), WORKER_VARS="N")],
                     db=str(disk / "trigger.db"))
        filler = disk / "filler"
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        filler.write_bytes(b"\0" * max(0, free - 300_000))
        job_id = stack.trigger("mb")["id"]
        refused = None
        for i in range(100):  # the disk fills while the log is stored
            resp = stack.post(json={"target": "ok", "vars": {"N": str(i)}})  # distinct jobs
            if resp.status_code == 503:
                refused = resp.json()["error"]
                break
            time.sleep(0.1)
        assert refused and "full" in refused, refused
        filler.unlink()  # space again: the follower catches up, the job ends
        job = stack.wait_state(job_id, timeout=30)
        assert job["state"] == "succeeded" and job["log_size"] > 1_000_000
        assert stack.post(json={"target": "ok", "wait": True}).status_code == 200
        db = sqlite3.connect(disk / "trigger.db")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
    finally:
        stack.close()
        subprocess.run(["umount", "-l", str(disk)], check=False)


LIMIT = 64 * 1024  # TRIGGER_MAX_BODY's default


def chunked(body: bytes):
    """A generator, so requests sends `body` with Transfer-Encoding: chunked (no length)."""
    for start in range(0, len(body), 8192):
        yield body[start:start + 8192]


def test_a_body_over_the_limit_is_a_413_chunked_or_not(stack):
    """werkzeug stops a chunked body at the limit without an error when the read ends exactly
    there: the controller must not act on the truncated body (a form missing its last field,
    JSON cut in two, a webhook whose signature no longer matches)."""
    stack.server([stack.worker()], TRIGGER_GITHUB_SECRET="gh-secret", TRIGGER_GITHUB_TARGET="ok",
                 TRIGGER_GITLAB_TOKEN="gl-token", TRIGGER_GITLAB_TARGET="ok",
                 TRIGGER_MAX_HOOK_BODY=LIMIT)  # (10 MiB by default: the same test, smaller)

    def post(path="/jobs", **kw):  # a connection each: a refused body may leave one unusable
        return requests.post(stack.url + path, timeout=60, **kw)

    form = {"Content-Type": "application/x-www-form-urlencoded"}
    as_json = {"Content-Type": "application/json"}
    over = ("target=ok&" * 7000 + "source=bogus").encode()  # the bogus field is past the limit
    assert len(over) > LIMIT
    refused = post(data=over, headers=form)  # with Content-Length
    assert refused.status_code == 413
    assert refused.json() == {"error": f"request body over {LIMIT} bytes (TRIGGER_MAX_BODY)"}
    sent = {
        "form": post(data=chunked(over), headers=form),
        "json": post(data=chunked(json.dumps({"target": "ok", "pad": "x" * LIMIT}).encode()),
                     headers=as_json),
        "exactly one byte over": post(
            data=chunked(b'{"target": "ok"}'.ljust(LIMIT + 1)), headers=as_json),
    }
    push = json.dumps({"ref": "refs/heads/main", "after": "1" * 40, "pad": "x" * LIMIT,
                       "repository": {"default_branch": "main"}}).encode()
    signature = "sha256=" + hmac.new(b"gh-secret", push, hashlib.sha256).hexdigest()
    sent["github"] = post("/hooks/github", data=chunked(push), headers={
        **as_json, "X-GitHub-Event": "push", "X-Hub-Signature-256": signature})
    sent["gitlab"] = post("/hooks/gitlab", data=chunked(push), headers={
        **as_json, "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "gl-token"})
    for what, resp in sent.items():
        expected = refused.json()["error"]
        if what.startswith("git"):
            expected = expected.replace("TRIGGER_MAX_BODY", "TRIGGER_MAX_HOOK_BODY")
        assert resp.status_code == 413 and resp.json() == {"error": expected}, (what, resp.text)
    assert stack.get("/jobs")["jobs"] == []  # nothing was queued from a cut-short body
    # up to the limit itself, chunked bodies are read whole and taken
    exact = post(data=chunked(b'{"target": "ok"}'.ljust(LIMIT)), headers=as_json)
    small = post(data=chunked(b"target=ok&wait=1"), headers=form)
    assert (exact.status_code, small.status_code) == (202, 200), (exact.text, small.text)


def test_an_answer_that_leaves_a_large_body_unread_says_connection_close(stack):
    """gunicorn discards at most 64 KiB of a body that the application did not read, and closes
    the connection past that. The answer must say so: a kept-alive client that sent its next
    request on the connection before the close reached it got "connection aborted" for it (13%
    of the time here, in a `requests.Session`, before)."""
    stack.server([stack.worker()], TRIGGER_API_TOKEN="api-token")
    session = requests.Session()  # without the Stack's retries, and a token only where given
    token = {"Authorization": "Bearer api-token"}
    big = {"target": "ok", "pad": "x" * 4 * LIMIT}  # (a chunked body just over it is read whole)

    def post(**kw):
        return session.post(stack.url + "/jobs", timeout=30, **kw)

    answers = {
        "over the limit": post(json=big, headers=token),
        "over the limit, chunked": post(data=chunked(json.dumps(big).encode()),
                                        headers={**token, "Content-Type": "application/json"}),
        "without the token": post(json=big),
    }
    for what, resp in answers.items():
        assert resp.headers["Connection"] == "close", (what, resp.status_code)
    kept = {"a small body without the token": post(json={"target": "ok"}),  # discarded: kept
            "taken": post(json={"target": "ok"}, headers=token)}
    assert [r.status_code for r in kept.values()] == [401, 202]
    for what, resp in kept.items():
        assert resp.headers["Connection"] == "keep-alive", what
    for _ in range(50):  # the sequence that failed: 413, then a request at once, one session
        assert post(json=big, headers=token).status_code == 413
        assert post(json={}, headers=token).status_code == 400


def test_a_malformed_chunked_body_is_a_400(stack):
    """A chunk size that is not hexadecimal: gunicorn's parse error must be the client's 400,
    not an internal error."""
    server = stack.server([stack.worker()])
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            piece = sock.recv(4096)
            if not piece:
                break
            answer += piece
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer
    assert "chunked" in json.loads(body)["error"]
    assert stack.get("/jobs")["jobs"] == []


def test_keep_jobs_bounds_the_history_with_its_logs(stack):
    """Without it the history and its logs (up to TRIGGER_MAX_LOG_BYTES each) grow for ever.
    The oldest ended jobs beyond TRIGGER_KEEP_JOBS are forgotten at start and each minute."""
    server = stack.server([stack.worker(WORKER_VARS="MSG")], TRIGGER_KEEP_JOBS=3)
    ids = [stack.post(json={"target": "marker", "vars": {"MSG": str(n)}, "wait": True}).json()["id"]
           for n in range(5)]
    server.stop()
    server.start()  # forgets at start
    wait_for(lambda: len(stack.get("/jobs")["jobs"]) == 3, what="the history to be cut to 3")
    assert [j["id"] for j in stack.get("/jobs")["jobs"]] == ids[:1:-1]
    for gone in ids[:2]:
        assert stack.http.get(f"{stack.url}/jobs/{gone}/log", timeout=10).status_code == 404
    assert stack.log(ids[2]).startswith("+ make")
