"""The webhook blueprint in-process: signatures, settings, and every way a push is ignored."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from urllib.parse import urlencode

import pytest

from tests.integration.test_webhooks import GITLAB_TOKEN, SECRET, github_push, gitlab_push, sign
from trigger_server import create_app, hooks
from trigger_server.store import JobState


# --- signatures and tokens --------------------------------------------------------------------
def test_the_signature_matches_githubs_documented_example():
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert hooks.github_signature("It's a Secret to Everybody", b"Hello, World!") == expected
    assert hooks.github_signature_ok("It's a Secret to Everybody", b"Hello, World!", expected)


@pytest.mark.parametrize("given", [
    None, "", "sha256=", "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
    "sha256=757107EA0EB2509FC211221CCE984B8A37570B6D7586C22C46F4379C8B043E17",
    "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59", "sha256=ü" * 3,
])
def test_anything_but_the_exact_signature_is_refused(given):
    assert not hooks.github_signature_ok("It's a Secret to Everybody", b"Hello, World!", given)


def test_no_secret_never_verifies():
    assert not hooks.github_signature_ok("", b"x", hooks.github_signature("", b"x"))
    assert not hooks.gitlab_token_ok("", "")


@pytest.mark.parametrize("given,ok", [
    ("tok", True), ("tok ", False), ("TOK", False), ("", False), (None, False), ("tök", False),
])
def test_the_gitlab_token_must_match_exactly(given, ok):
    assert hooks.gitlab_token_ok("tok", given) is ok


# --- the app ----------------------------------------------------------------------------------
def make_app(tmp_path, **settings):
    cfg = {"WORKER_TOKEN": "t", "WORKERS": [], "DB": str(tmp_path / "t.db"),
           "GITHUB_SECRET": SECRET, "GITHUB_TARGET": "site",
           "GITLAB_TOKEN": GITLAB_TOKEN, "GITLAB_TARGET": "site"}
    cfg.update(settings)
    return create_app(cfg)


@pytest.fixture
def app(tmp_path):
    return make_app(tmp_path)


@pytest.fixture
def client(app):
    return app.test_client()


def github(client, payload, event="push", delivery="d-1", content_type="application/json",
           body=None):
    body = json.dumps(payload).encode() if body is None else body
    headers = {"X-GitHub-Event": event, "X-Hub-Signature-256": sign(SECRET, body),
               "Content-Type": content_type}
    if delivery is not None:
        headers["X-GitHub-Delivery"] = delivery
    return client.post("/hooks/github", data=body, headers=headers)


def gitlab(client, payload, event="Push Hook", **headers):
    return client.post("/hooks/gitlab", data=json.dumps(payload), headers={
        "X-Gitlab-Event": event, "X-Gitlab-Token": GITLAB_TOKEN,
        "Content-Type": "application/json", **headers})


def jobs(app) -> list:
    return app.extensions["store"].list_jobs()


def test_a_push_queues_the_configured_target_as_a_webhook_job(app, client):
    resp = github(client, github_push("main"))
    assert resp.status_code == 202
    assert (resp.json["target"], resp.json["source"], resp.json["state"]) == (
        "site", "webhook", "queued")
    assert [j.id for j in jobs(app)] == [resp.json["id"]]


def test_a_second_push_while_the_job_is_queued_coalesces(app, client):
    first = github(client, github_push("main"), delivery="a").json
    second = github(client, github_push("main"), delivery="b").json
    assert second["id"] == first["id"] and second["coalesced"] is True


def test_a_form_encoded_delivery_is_read_from_its_payload_field(app, client):
    body = urlencode({"payload": json.dumps(github_push("main"))}).encode()
    resp = github(client, None, body=body, content_type="application/x-www-form-urlencoded")
    assert resp.status_code == 202 and resp.json["target"] == "site"


def test_a_database_error_between_the_two_records_leaves_neither(app, client, tmp_path):
    """The delivery id and the body's digest were recorded one after the other: an id left
    recorded without its job refused GitHub's redelivery as a duplicate, losing the push."""
    body = json.dumps(github_push("main")).encode()
    db = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    db.execute("CREATE TRIGGER full BEFORE INSERT ON deliveries WHEN NEW.delivery LIKE 'sha256:%' "
               "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    db.execute("CREATE TRIGGER stuck BEFORE DELETE ON deliveries "  # an undo fails alike
               "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    assert github(client, None, body=body, delivery="r-1").status_code == 503
    db.execute("DROP TRIGGER full")
    db.execute("DROP TRIGGER stuck")
    db.close()
    assert github(client, None, body=body, delivery="r-1").status_code == 202  # redelivered


def test_webhooks_have_their_own_body_limit_and_the_api_keeps_its_own(tmp_path):
    app = make_app(tmp_path, MAX_HOOK_BODY=500_000, GITLAB_TOKEN="")
    client = app.test_client()
    payload = github_push("main")
    payload["head_commit"]["modified"] = ["x" * 100] * 1000  # about 200 KB (in two places)
    assert github(client, payload).status_code == 202
    payload["head_commit"]["modified"] *= 3
    resp = github(client, payload, delivery="d-2")
    assert resp.status_code == 413 and "TRIGGER_MAX_HOOK_BODY" in resp.json["error"]
    resp = client.post("/jobs", json={"target": "site", "pad": "x" * 100_000})
    assert resp.status_code == 413 and "(TRIGGER_MAX_BODY)" in resp.json["error"]
    assert hooks.body_limit("/hooks/gitlab", app.config) is None  # off: no big body for anyone
    assert hooks.body_limit("/hooks/github", app.config) == (500_000, "TRIGGER_MAX_HOOK_BODY")


def test_a_push_without_a_delivery_id_still_queues(app, client):
    assert github(client, github_push("main"), delivery=None).status_code == 202


@pytest.mark.parametrize("replay_id", ["d-2", None])
def test_a_replayed_signed_body_is_refused_whatever_its_delivery_id(app, client, replay_id):
    """X-GitHub-Delivery is not signed: whoever captured one signed push could send it again
    under new ids (or none) for ever. The signed body itself is remembered too."""
    body = json.dumps(github_push("main")).encode()
    first = github(client, None, body=body, delivery="d-1")
    assert first.status_code == 202
    app.extensions["store"].finish(first.json["id"], JobState.SUCCEEDED, 0, None)
    again = github(client, None, body=body, delivery=replay_id)
    assert again.status_code == 200 and "same signed body" in again.json["ignored"]
    assert len(jobs(app)) == 1
    assert github(client, github_push("main"), delivery="d-3").status_code == 202  # a new push
    assert len(jobs(app)) == 2
    assert github(client, github_push("main"), delivery="d-4").json.get("coalesced") is True


@pytest.mark.parametrize("days, queued", [(30, False), (28, True)])
def test_a_push_older_than_the_remembered_deliveries_is_not_queued(app, client, days, queued):
    """A signed push body is remembered for 30 days (store.DELIVERY_DAYS): one captured and
    sent again after that was queued again, a build for whoever kept it."""
    import time

    payload = github_push("main")
    payload["repository"]["pushed_at"] = int(time.time()) - days * 86400
    resp = github(client, payload)
    if queued:
        assert resp.status_code == 202
    else:
        assert resp.status_code == 200 and "cannot be told from a replay" in resp.json["ignored"]
    assert len(jobs(app)) == (1 if queued else 0)


@pytest.mark.parametrize("pushed_at", ["10" + "0" * 400, "1e400", "NaN", '"1700000000"', "null"])
def test_a_push_time_that_is_no_usable_number_is_taken_as_before(app, client, pushed_at):
    """An integer beyond any float was a 500 (OverflowError); infinities and strings are no
    age: the push is queued as it was before the age was looked at."""
    body = json.dumps(github_push("main")).encode()
    body = re.sub(rb'"pushed_at": \d+', b'"pushed_at": ' + pushed_at.encode(), body)
    assert pushed_at.encode() in body
    assert github(client, None, body=body).status_code == 202


def test_the_branch_setting_overrides_the_default_branch(tmp_path):
    client = make_app(tmp_path, GITHUB_BRANCH="release").test_client()
    assert github(client, github_push("main")).json == {
        "ignored": "push to branch main, not release"}
    assert github(client, github_push("release"), delivery="d-2").status_code == 202


PUSH_SHAPE = {"before": "0" * 40, "after": "1" * 40, "pusher": {"name": "octocat"}}


@pytest.mark.parametrize("payload,error", [
    ([1, 2], "JSON object"),
    ({**PUSH_SHAPE, "repository": {"default_branch": "main"}}, "no ref"),
    ({**PUSH_SHAPE, "ref": 5, "repository": {"default_branch": "main"}}, "must be a string"),
    ({**PUSH_SHAPE, "ref": "refs/heads/main", "repository": {}}, "set TRIGGER_GITHUB_BRANCH"),
    ({**PUSH_SHAPE, "ref": "refs/heads/main", "repository": "main"},
     "set TRIGGER_GITHUB_BRANCH"),
    # no before/after/pusher: another event's body (workflow_dispatch) sent as a push
    ({"ref": "refs/heads/main", "repository": {"default_branch": "main"}}, "not a push payload"),
    ({**PUSH_SHAPE, "after": "x", "ref": "refs/heads/main"}, "not a push payload"),
])
def test_a_signed_but_unusable_payload_is_a_400(app, client, payload, error):
    resp = github(client, payload)
    assert resp.status_code == 400 and error in resp.json["error"]
    assert jobs(app) == []


def test_non_utf8_bytes_are_a_400_not_a_crash(app, client):
    resp = github(client, None, body=b"\xff\xfe{}")
    assert resp.status_code == 400 and jobs(app) == []


def test_an_overlong_delivery_id_is_a_400(app, client):
    resp = github(client, github_push("main"), delivery="x" * 201)
    assert resp.status_code == 400 and jobs(app) == []


def test_a_ref_that_is_not_a_branch_is_ignored(client):
    resp = github(client, github_push(ref="refs/pull/7/head"))
    assert resp.json == {"ignored": "refs/pull/7/head is not a branch"}


def test_a_ping_needs_no_payload_shape(client):
    assert github(client, {"zen": "Design for failure."}, event="ping").json == {
        "ok": True, "event": "ping"}


def test_a_gitlab_push_uses_the_event_uuid_without_an_idempotency_key(app, client):
    first = gitlab(client, gitlab_push("main"), **{"X-Gitlab-Event-UUID": "u-1"})
    assert first.status_code == 202
    again = gitlab(client, gitlab_push("main"), **{"X-Gitlab-Event-UUID": "u-1"})
    assert again.json == {"ignored": "duplicate delivery u-1"}


def test_a_gitlab_branch_deletion_is_ignored(client):
    payload = gitlab_push("main")
    payload["after"] = "0" * 40
    payload["checkout_sha"] = None
    assert gitlab(client, payload).json == {"ignored": "branch main was deleted"}


def test_a_gitlab_push_hook_header_with_another_object_kind_is_ignored(client):
    resp = gitlab(client, {**gitlab_push("main"), "object_kind": "tag_push"})
    assert resp.status_code == 200 and "ignored" in resp.json


def test_malformed_gitlab_json_is_a_400(client):
    resp = client.post("/hooks/gitlab", data="{", headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN})
    assert resp.status_code == 400 and "JSON object" in resp.json["error"]


def test_a_get_is_not_allowed(client):
    assert client.get("/hooks/github").status_code == 405


def test_a_misconfigured_endpoint_is_logged_at_startup(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="trigger_server.hooks"):
        make_app(tmp_path, GITHUB_TARGET="", GITLAB_TARGET="site", GITLAB_BRANCH="main")
    messages = [r.getMessage() for r in caplog.records]
    assert any("/hooks/github answer 503: TRIGGER_GITHUB_TARGET is not set" in m
               for m in messages)
    assert any("a push to main queues site" in m for m in messages)
    assert not any(SECRET in m or GITLAB_TOKEN in m for m in messages)
