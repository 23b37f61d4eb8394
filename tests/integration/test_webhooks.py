"""Git-host webhooks against a real controller and worker: GitHub's signed pushes and GitLab's
token, each queueing one job for a push to the chosen branch and nothing for anything else."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import sqlite3
import time
import uuid

import pytest
import requests

from .procs import wait_for

SECRET = "It's a Secret to Everybody"
GITLAB_TOKEN = "gitlab-webhook-token"
OLD_SHA = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
NEW_SHA = "59b20b8d5c6ff8d09518454d4dd8b7b30f095ab5"
PUSHED_AT = itertools.count(int(time.time()))  # each push GitHub sends has its own time
ZERO_SHA = "0" * 40


# --- what the hosts send ------------------------------------------------------------------------
def sign(secret: str, body: bytes) -> str:
    """X-Hub-Signature-256 as GitHub computes it (its documented algorithm, written anew)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github_push(branch: str = "main", default_branch: str = "main", *, ref: str | None = None,
                deleted: bool = False) -> dict:
    """A push event as GitHub sends it, trimmed to the fields a receiver might read."""
    commit = {
        "id": NEW_SHA, "tree_id": "f9d2a07e9488b91af2641b26b9407fe22a451433", "distinct": True,
        "message": "Update the about page", "timestamp": "2026-11-27T18:30:02+01:00",
        "url": f"https://github.com/octo-org/site/commit/{NEW_SHA}",
        "author": {"name": "Mona Octocat", "email": "mona@github.com", "username": "octocat"},
        "committer": {"name": "GitHub", "email": "noreply@github.com", "username": "web-flow"},
        "added": [], "removed": [], "modified": ["pages/about.md"],
    }
    return {
        "ref": ref or f"refs/heads/{branch}",
        "before": OLD_SHA,
        "after": ZERO_SHA if deleted else NEW_SHA,
        "repository": {
            "id": 186853002, "node_id": "MDEwOlJlcG9zaXRvcnkxODY4NTMwMDI=", "name": "site",
            "full_name": "octo-org/site", "private": False,
            "owner": {"name": "octo-org", "login": "octo-org", "id": 6811672,
                      "type": "Organization"},
            "html_url": "https://github.com/octo-org/site",
            "clone_url": "https://github.com/octo-org/site.git",
            "default_branch": default_branch, "master_branch": default_branch,
            "pushed_at": next(PUSHED_AT),
        },
        "pusher": {"name": "octocat", "email": "mona@github.com"},
        "sender": {"login": "octocat", "id": 583231, "type": "User"},
        "created": False,
        "deleted": deleted,
        "forced": False,
        "base_ref": None,
        "compare": f"https://github.com/octo-org/site/compare/{OLD_SHA[:12]}...{NEW_SHA[:12]}",
        "commits": [] if deleted else [commit],
        "head_commit": None if deleted else commit,
    }


GITHUB_PING = {
    "zen": "Keep it logically awesome.",
    "hook_id": 479393284,
    "hook": {"type": "Repository", "id": 479393284, "name": "web", "active": True,
             "events": ["push"], "config": {"content_type": "json", "insecure_ssl": "0",
                                            "url": "https://ci.example.org/hooks/github"}},
    "repository": {"id": 186853002, "name": "site", "full_name": "octo-org/site",
                   "default_branch": "main"},
    "sender": {"login": "octocat", "id": 583231, "type": "User"},
}


def gitlab_push(branch: str = "main", default_branch: str = "main", *,
                kind: str = "push") -> dict:
    """A Push Hook (or, with kind="tag_push", a Tag Push Hook) as GitLab sends it, trimmed."""
    ref = f"refs/tags/{branch}" if kind == "tag_push" else f"refs/heads/{branch}"
    return {
        "object_kind": kind, "event_name": kind,
        "before": "95790bf891e76fee5e1747ab589903a6a1f80f22",
        "after": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        "ref": ref, "ref_protected": True,
        "checkout_sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        "user_id": 4, "user_name": "John Smith", "user_username": "jsmith",
        "user_email": "", "project_id": 15,
        "project": {
            "id": 15, "name": "Site", "description": "", "namespace": "Mike",
            "web_url": "https://gitlab.example.com/mike/site",
            "git_http_url": "https://gitlab.example.com/mike/site.git",
            "path_with_namespace": "mike/site", "visibility_level": 0,
            "default_branch": default_branch,
        },
        "repository": {"name": "Site", "url": "git@gitlab.example.com:mike/site.git",
                       "homepage": "https://gitlab.example.com/mike/site", "description": "",
                       "visibility_level": 0},
        "commits": [{
            "id": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7", "message": "Fix a typo\n",
            "title": "Fix a typo", "timestamp": "2026-11-27T18:30:02+01:00",
            "url": "https://gitlab.example.com/mike/site/-/commit/da15608",
            "author": {"name": "John Smith", "email": "[REDACTED]"},
            "added": [], "modified": ["pages/about.md"], "removed": [],
        }],
        "total_commits_count": 1,
    }


def send_github(url: str, payload, event: str = "push", *, delivery: str | None = None,
                secret: str | None = SECRET, signature: str | None = None,
                body: bytes | None = None, content_type: str = "application/json"
                ) -> requests.Response:
    """POST a delivery as GitHub does: the signature covers the exact bytes sent."""
    body = json.dumps(payload).encode() if body is None else body
    headers = {"Content-Type": content_type, "User-Agent": "GitHub-Hookshot/1f4e2a8",
               "X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
               "X-GitHub-Hook-ID": "479393284"}
    if signature is None and secret is not None:
        signature = sign(secret, body)
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    return requests.post(url + "/hooks/github", data=body, headers=headers, timeout=30)


def send_gitlab(url: str, payload, event: str = "Push Hook", *, token: str | None = GITLAB_TOKEN,
                uuid_header: str | None = None, idempotency_key: str | None = None,
                body: bytes | None = None) -> requests.Response:
    headers = {"Content-Type": "application/json", "User-Agent": "GitLab/17.6.0",
               "X-Gitlab-Event": event, "X-Gitlab-Instance": "https://gitlab.example.com",
               "X-Gitlab-Webhook-UUID": "2b6b1d2c-8d3a-4a7e-9b0f-0c1d2e3f4a5b",
               "X-Gitlab-Event-UUID": uuid_header or str(uuid.uuid4())}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    if token is not None:
        headers["X-Gitlab-Token"] = token
    body = json.dumps(payload).encode() if body is None else body
    return requests.post(url + "/hooks/gitlab", data=body, headers=headers, timeout=30)


# --- fixtures and helpers -------------------------------------------------------------------
@pytest.fixture(scope="module")
def hooked(module_stack):
    """A controller with both webhooks on, each queueing `ok` for its default branch."""
    module_stack.server([module_stack.worker(name="hooked")],
                        TRIGGER_GITHUB_SECRET=SECRET, TRIGGER_GITHUB_TARGET="ok",
                        TRIGGER_GITLAB_TOKEN=GITLAB_TOKEN, TRIGGER_GITLAB_TARGET="ok")
    return module_stack


def job_ids(stack) -> set[int]:
    return {j["id"] for j in stack.get("/jobs?limit=500")["jobs"]}


def assert_nothing_queued(stack, before: set[int]) -> None:
    assert job_ids(stack) == before


def deliveries(stack, provider: str) -> dict[str, int | None]:
    """delivery id -> job id, read from the controller's database."""
    with sqlite3.connect(str(stack.tmp / "trigger.db")) as db:
        rows = db.execute("SELECT delivery, job_id FROM deliveries WHERE provider = ?",
                          (provider,)).fetchall()
    return dict(rows)


def assert_queued_by_webhook(stack, resp: requests.Response, before: set[int]) -> dict:
    """One new job, answered 202 with the job, that builds `ok` and succeeds."""
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["target"] == "ok" and job["source"] == "webhook" and job["coalesced"] is False
    assert resp.headers["Location"] == f"/jobs/{job['id']}"
    assert job_ids(stack) - before == {job["id"]}
    done = stack.wait_state(job["id"])
    assert done["state"] == "succeeded" and done["source"] == "webhook"
    assert "building ok" in stack.log(job["id"])
    return done


# --- GitHub -----------------------------------------------------------------------------------
def test_github_ping_is_answered(hooked):
    resp = send_github(hooked.url, GITHUB_PING, event="ping")
    assert resp.status_code == 200 and resp.json() == {"ok": True, "event": "ping"}


def test_a_github_push_to_the_default_branch_queues_one_job(hooked):
    before = job_ids(hooked)
    delivery = str(uuid.uuid4())
    resp = send_github(hooked.url, github_push("main"), delivery=delivery)
    job = assert_queued_by_webhook(hooked, resp, before)
    assert deliveries(hooked, "github")[delivery] == job["id"]


def test_a_github_push_to_another_branch_is_ignored(hooked):
    before = job_ids(hooked)
    resp = send_github(hooked.url, github_push("feature/menu", default_branch="main"))
    assert resp.status_code == 200
    assert resp.json() == {"ignored": "push to branch feature/menu, not main"}
    assert_nothing_queued(hooked, before)


def test_the_default_branch_comes_from_the_payload(hooked):
    before = job_ids(hooked)
    resp = send_github(hooked.url, github_push("trunk", default_branch="trunk"))
    assert_queued_by_webhook(hooked, resp, before)


@pytest.mark.parametrize("payload,reason", [
    (github_push(ref="refs/tags/v1.2.0"), "tag push refs/tags/v1.2.0"),
    (github_push("main", deleted=True), "branch main was deleted"),
])
def test_tag_pushes_and_branch_deletions_are_ignored(hooked, payload, reason):
    before = job_ids(hooked)
    resp = send_github(hooked.url, payload)
    assert resp.status_code == 200 and resp.json() == {"ignored": reason}
    assert_nothing_queued(hooked, before)


def test_other_github_events_are_ignored(hooked):
    before = job_ids(hooked)
    issue = {"action": "opened", "issue": {"number": 7, "title": "Typo"},
             "repository": {"full_name": "octo-org/site", "default_branch": "main"}}
    resp = send_github(hooked.url, issue, event="issues")
    assert resp.status_code == 200
    assert resp.json() == {"ignored": "event issues is not handled; only push is"}
    assert_nothing_queued(hooked, before)


@pytest.mark.parametrize("how", ["wrong secret", "tampered body", "garbage", "sha1 only",
                                 "missing"])
def test_a_github_push_without_a_valid_signature_is_refused(hooked, how):
    before = job_ids(hooked)
    payload = github_push("main")
    body = json.dumps(payload).encode()
    if how == "wrong secret":
        resp = send_github(hooked.url, payload, secret="not the secret")
    elif how == "tampered body":
        resp = send_github(hooked.url, payload, signature=sign(SECRET, body),
                           body=body.replace(b"main", b"mainx", 1))
    elif how == "garbage":
        resp = send_github(hooked.url, payload, signature="sha256=" + "ab" * 32)
    elif how == "sha1 only":  # the legacy X-Hub-Signature header is not enough
        resp = requests.post(hooked.url + "/hooks/github", data=body, timeout=30, headers={
            "Content-Type": "application/json", "X-GitHub-Event": "push",
            "X-Hub-Signature": "sha1=" + hmac.new(SECRET.encode(), body, "sha1").hexdigest()})
    else:
        resp = send_github(hooked.url, payload, secret=None)
    assert resp.status_code == 401, resp.text
    assert "X-Hub-Signature-256" in resp.json()["error"]
    assert_nothing_queued(hooked, before)


def test_a_redelivered_github_push_is_not_queued_twice(hooked):
    before = job_ids(hooked)
    delivery = str(uuid.uuid4())
    first = send_github(hooked.url, github_push("main"), delivery=delivery)
    job = assert_queued_by_webhook(hooked, first, before)
    again = send_github(hooked.url, github_push("main"), delivery=delivery)
    assert again.status_code == 200
    assert again.json() == {"ignored": f"duplicate delivery {delivery}"}
    assert job_ids(hooked) - before == {job["id"]}
    assert deliveries(hooked, "github")[delivery] == job["id"]


def test_malformed_json_with_a_valid_signature_is_a_400(hooked):
    before = job_ids(hooked)
    resp = send_github(hooked.url, None, body=b'{"ref": "refs/heads/main",')
    assert resp.status_code == 400 and "JSON object" in resp.json()["error"]
    assert_nothing_queued(hooked, before)


NESTED = b"[" * 20_000 + b"]" * 20_000  # within the body limit, beyond Python's recursion limit


@pytest.mark.parametrize("send", [
    lambda url: send_github(url, None, body=NESTED),
    lambda url: send_github(url, None, body=b"payload=" + b"%5B" * 5000 + b"%5D" * 5000,
                            content_type="application/x-www-form-urlencoded"),
    lambda url: send_gitlab(url, None, body=NESTED),
], ids=["github", "github-form", "gitlab"])
def test_deeply_nested_json_is_a_400(hooked, send):
    before = job_ids(hooked)
    resp = send(hooked.url)
    assert resp.status_code == 400 and "JSON object" in resp.json()["error"], resp.text
    assert_nothing_queued(hooked, before)


def test_a_big_push_is_taken_and_one_over_the_hook_limit_is_a_413(hooked):
    """A push lists its commits and their files: 1 MB is an ordinary big push, which the API's
    own limit (TRIGGER_MAX_BODY, 64 KiB) refused. TRIGGER_MAX_HOOK_BODY (10 MiB) applies."""
    payload = github_push("main")
    payload["head_commit"]["modified"] = [f"pages/lesson-{i:05d}/index.md" for i in range(40_000)]
    assert len(json.dumps(payload)) > 1_000_000
    resp = send_github(hooked.url, payload)
    assert resp.status_code == 202, resp.text
    payload["padding"] = "x" * (10 * 1024 * 1024)
    resp = send_github(hooked.url, payload)
    assert resp.status_code == 413 and "TRIGGER_MAX_HOOK_BODY" in resp.json()["error"]


def test_no_secret_or_signature_reaches_the_log(hooked):
    body = json.dumps(github_push("main")).encode()
    queued = [send_github(hooked.url, None, body=body).json()["id"]]
    send_github(hooked.url, None, body=body, secret="wrong")
    queued.append(send_gitlab(hooked.url, gitlab_push("main")).json()["id"])
    for job_id in queued:
        hooked.wait_state(job_id)
    output = "\n".join(p.settled_output() for p in hooked.procs)
    for secret in (SECRET, GITLAB_TOKEN, sign(SECRET, body), sign("wrong", body)[7:]):
        assert secret not in output


# --- GitLab -----------------------------------------------------------------------------------
def test_a_gitlab_push_to_the_default_branch_queues_one_job(hooked):
    before = job_ids(hooked)
    event_uuid = str(uuid.uuid4())
    resp = send_gitlab(hooked.url, gitlab_push("main"), uuid_header=event_uuid)
    job = assert_queued_by_webhook(hooked, resp, before)
    assert deliveries(hooked, "gitlab")[event_uuid] == job["id"]


@pytest.mark.parametrize("token", [None, "", "wrong-token", GITLAB_TOKEN + "x"])
def test_a_gitlab_push_without_the_token_is_refused(hooked, token):
    before = job_ids(hooked)
    resp = send_gitlab(hooked.url, gitlab_push("main"), token=token)
    assert resp.status_code == 401 and "X-Gitlab-Token" in resp.json()["error"]
    assert_nothing_queued(hooked, before)


@pytest.mark.parametrize("payload,event,reason", [
    (gitlab_push("develop"), "Push Hook", "push to branch develop, not main"),
    (gitlab_push("v1.0.0", kind="tag_push"), "Tag Push Hook",
     "event Tag Push Hook is not handled; only Push Hook is"),
    ({"object_kind": "merge_request", "project": {"default_branch": "main"}},
     "Merge Request Hook", "event Merge Request Hook is not handled; only Push Hook is"),
])
def test_other_gitlab_events_and_branches_are_ignored(hooked, payload, event, reason):
    before = job_ids(hooked)
    resp = send_gitlab(hooked.url, payload, event=event)
    assert resp.status_code == 200 and resp.json() == {"ignored": reason}
    assert_nothing_queued(hooked, before)


def test_a_retried_gitlab_push_is_not_queued_twice(hooked):
    """A retry carries the same Idempotency-Key (it wins over X-Gitlab-Event-UUID)."""
    before = job_ids(hooked)
    key = str(uuid.uuid4())
    first = send_gitlab(hooked.url, gitlab_push("main"), idempotency_key=key)
    job = assert_queued_by_webhook(hooked, first, before)
    again = send_gitlab(hooked.url, gitlab_push("main"), idempotency_key=key)
    assert again.status_code == 200 and again.json() == {"ignored": f"duplicate delivery {key}"}
    assert job_ids(hooked) - before == {job["id"]}
    assert deliveries(hooked, "gitlab")[key] == job["id"]


# --- settings ---------------------------------------------------------------------------------
def test_without_a_secret_the_endpoints_do_not_exist(stack):
    stack.server([stack.worker()], TRIGGER_GITHUB_TARGET="ok", TRIGGER_GITLAB_TARGET="ok")
    before = job_ids(stack)
    github = send_github(stack.url, github_push("main"), secret="")
    assert github.status_code == 404
    assert github.json() == {"error": "GitHub webhooks are off: TRIGGER_GITHUB_SECRET is not set"}
    gitlab = send_gitlab(stack.url, gitlab_push("main"), token="")
    assert gitlab.status_code == 404
    assert gitlab.json() == {"error": "GitLab webhooks are off: TRIGGER_GITLAB_TOKEN is not set"}
    assert_nothing_queued(stack, before)


@pytest.mark.parametrize("target,message", [
    ("", "TRIGGER_GITHUB_TARGET is not set"),
    ("-f", "TRIGGER_GITHUB_TARGET: target must not start with '-'"),
])
def test_a_missing_or_bad_target_makes_the_endpoint_unavailable(stack, target, message):
    env = {"TRIGGER_GITHUB_SECRET": SECRET}
    if target:
        env["TRIGGER_GITHUB_TARGET"] = target
    proc = stack.server([stack.worker()], **env)
    before = job_ids(stack)
    for event, payload in (("ping", GITHUB_PING), ("push", github_push("main"))):
        resp = send_github(stack.url, payload, event=event)
        assert resp.status_code == 503 and resp.json()["error"].startswith(message)
    assert send_github(stack.url, github_push("main"), secret="wrong").status_code == 401
    assert_nothing_queued(stack, before)
    wait_for(lambda: message in proc.output(), what="the error in the controller's log")


def test_a_target_the_makefile_lacks_is_refused_and_not_recorded(stack):
    """The push is answered 503 with what to fix, nothing is queued, and the delivery is not
    recorded: GitHub's "Redeliver" works once the setting is fixed."""
    proc = stack.server([stack.worker()], TRIGGER_GITHUB_SECRET=SECRET,
                        TRIGGER_GITHUB_TARGET="nosuch")
    before = job_ids(stack)
    delivery = str(uuid.uuid4())
    resp = send_github(stack.url, github_push("main"), delivery=delivery)
    message = ("TRIGGER_GITHUB_TARGET: target nosuch is not a target the worker offers: not in "
               "its makefile, or not allowed by its WORKER_TARGETS (see GET /targets)")
    assert resp.status_code == 503 and resp.json() == {"error": message}
    assert_nothing_queued(stack, before)
    assert delivery not in deliveries(stack, "github")
    wait_for(lambda: message in proc.output(), what="the error in the controller's log")


def test_a_makefile_slow_to_list_does_not_hold_the_delivery(stack):
    """Listing the targets runs `make -p`, as slow as the makefile's $(shell ...) lines; GitHub
    gives up on a delivery after 10 s. The push is answered once the list has taken
    TARGETS_WAIT (3 s), before it is there, and the worker checks the target when it starts."""
    workdir = stack.workspace(makefile="LISTED := $(shell sleep 7; echo x >> read.txt)\n"
                                       "ok:\n\t@echo building ok\n")
    stack.server([stack.worker(workdir)], TRIGGER_GITHUB_SECRET=SECRET,
                 TRIGGER_GITHUB_TARGET="ok")
    before = job_ids(stack)
    resp = send_github(stack.url, github_push("main"))
    assert resp.status_code == 202, resp.text
    read = stack.tmp / "ws" / "read.txt"
    assert not read.exists(), "the delivery was answered only after make had read the makefile"
    job = resp.json()
    assert job_ids(stack) - before == {job["id"]}
    assert stack.wait_state(job["id"], timeout=60)["state"] == "succeeded"
    assert "building ok" in stack.log(job["id"])


def test_webhooks_need_no_api_token(stack):
    """Git hosts cannot send the API token; the signature is their authentication."""
    stack.server([stack.worker()], TRIGGER_API_TOKEN="api-token",
                 TRIGGER_GITHUB_SECRET=SECRET, TRIGGER_GITHUB_TARGET="ok")
    before = job_ids(stack)  # stack.http sends the API token
    resp = send_github(stack.url, github_push("main"))  # no Authorization header
    assert_queued_by_webhook(stack, resp, before)
    wrong = send_github(stack.url, github_push("main"), secret="wrong")
    assert wrong.status_code == 401 and "X-Hub-Signature-256" in wrong.json()["error"]
    assert requests.get(stack.url + "/jobs", timeout=5).status_code == 401  # the API still is


def test_a_signed_delivery_of_another_event_sent_again_as_a_push_is_not_queued(hooked):
    """The event's name (X-GitHub-Event) is not signed: a captured delivery of another event
    must not be replayable as a push. Every signed body is remembered as it arrives, so even a
    body shaped as a push (the shape is checked too: see below) that came as another event is
    a duplicate when it comes again as a push."""
    before = job_ids(hooked)
    body = json.dumps(github_push("main")).encode()
    first = send_github(hooked.url, None, event="workflow_run", body=body)
    assert first.status_code == 200 and "ignored" in first.json()
    again = send_github(hooked.url, None, event="push", body=body)
    assert again.status_code == 200, again.text
    assert again.json() == {"ignored": "duplicate delivery with the same signed body as an "
                                       "earlier one"}
    assert_nothing_queued(hooked, before)


def test_a_signed_body_that_is_not_a_push_is_refused_as_one_even_if_never_seen(hooked):
    """A delivery of another event this controller never received (the hook sends only
    pushes, as README advises; or it failed) can still be captured, signature and all, from
    GitHub's delivery log: sent as a push, it must not queue a build."""
    before = job_ids(hooked)
    dispatch = {"ref": "refs/heads/main", "inputs": {"n": str(uuid.uuid4())},
                "workflow": ".github/workflows/x.yml",
                "repository": {"full_name": "octo-org/site", "default_branch": "main"}}
    resp = send_github(hooked.url, dispatch, event="push")
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"].startswith("not a push payload")
    assert_nothing_queued(hooked, before)


def test_a_push_whose_ref_is_not_a_string_is_told_so(hooked):
    push = github_push("main")
    push["ref"] = 5
    resp = send_github(hooked.url, push)
    assert resp.status_code == 400
    assert resp.json()["error"] == ("the push payload's ref must be a string "
                                    "(refs/heads/<branch>), not 5")
