"""Git-host webhooks: a push to the chosen branch queues one configured target.

Each endpoint is off (404) unless its secret is configured, and checks the host's signature
(GitHub) or token (GitLab) in constant time before anything of the request is parsed. Each
delivery id is recorded, and for GitHub (whose id is not signed) a digest of the signed body
too, so a redelivered or replayed push never queues twice. Secrets and signatures are
never logged, stored or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from dataclasses import dataclass
from urllib.parse import parse_qs

from flask import Blueprint, current_app, jsonify, request

from worker import rules

from . import config as config_module
from . import json_numbers
from .store import DELIVERY_DAYS

log = logging.getLogger(__name__)

bp = Blueprint("hooks", __name__, url_prefix="/hooks")

SOURCE = "webhook"
# A GitHub push older than this is not queued: a day less than its signed body's digest is
# remembered (store.DELIVERY_DAYS), for a controller's clock behind GitHub's.
PUSH_MAX_DAYS = DELIVERY_DAYS - 1
ZERO_SHA = "0" * 40  # the `after` of a push that deleted its branch
MAX_DELIVERY_ID = 200


@dataclass(frozen=True)
class Host:
    """One git host's settings, by their keys in the app config."""

    name: str  # in URLs, the deliveries table and logs
    title: str
    secret: str
    branch: str
    target: str


GITHUB = Host("github", "GitHub", "GITHUB_SECRET", "GITHUB_BRANCH", "GITHUB_TARGET")
GITLAB = Host("gitlab", "GitLab", "GITLAB_TOKEN", "GITLAB_BRANCH", "GITLAB_TARGET")
HOSTS = {f"/hooks/{h.name}": h for h in (GITHUB, GITLAB)}


def body_limit(path: str, config) -> tuple[int, str] | None:
    """The body limit of a webhook endpoint that is on, and its setting's name (None for any
    other path): a push lists its commits and their files, far beyond TRIGGER_MAX_BODY (GitHub
    sends up to 25 MB). An endpoint that is off keeps the small limit: nobody is asked for
    a big body before a secret exists to check it with."""
    host = HOSTS.get(path)
    if host is None or not config.get(host.secret):
        return None
    return config["MAX_HOOK_BODY"], "TRIGGER_MAX_HOOK_BODY"


@dataclass(frozen=True)
class Push:
    """What a push event says, whatever host sent it."""

    ref: object
    deleted: bool
    default_branch: object
    delivery: str | None  # the host's delivery id (GitHub's is not signed)
    signed: str | None = None  # a digest of the signed body: a replay is refused by it too


class Misconfigured(Exception):
    """An endpoint's secret is set but its target is missing or malformed."""


def env_var(key: str) -> str:
    """The environment variable behind a setting, for messages: GITHUB_TARGET -> TRIGGER_..."""
    return config_module.SETTINGS[key][0]


# --- checking the sender ----------------------------------------------------------------------
def github_signature(secret: str, body: bytes) -> str:
    """GitHub's X-Hub-Signature-256 value for `body`: sha256=<hex HMAC-SHA256>."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github_signature_ok(secret: str, body: bytes, given: str | None) -> bool:
    """True if `given` is the signature of the raw `body` (compared in constant time)."""
    if not secret or not given:
        return False
    return hmac.compare_digest(given.encode(), github_signature(secret, body).encode())


def gitlab_token_ok(token: str, given: str | None) -> bool:
    """True if the X-Gitlab-Token header equals the configured token (constant time)."""
    if not token or not given:
        return False
    return hmac.compare_digest(given.encode(), token.encode())


# --- settings --------------------------------------------------------------------------------
def configured_target(cfg, host: Host) -> str:
    """The target a push queues; raises Misconfigured naming the variable to set."""
    target = cfg.get(host.target)
    if not target:
        raise Misconfigured(f"{env_var(host.target)} is not set")
    try:
        return rules.check_target_syntax(target)
    except rules.RuleError as exc:
        raise Misconfigured(f"{env_var(host.target)}: {exc}") from None


def _log_settings(state) -> None:
    """At startup, say which endpoints are on, and loudly which cannot queue anything."""
    cfg = state.app.config
    for host in (GITHUB, GITLAB):
        if not cfg.get(host.secret):
            continue
        try:
            target = configured_target(cfg, host)
        except Misconfigured as exc:
            log.error("%s webhooks at /hooks/%s answer 503: %s", host.title, host.name, exc)
            continue
        branch = cfg.get(host.branch) or "the repository's default branch"
        log.info("%s webhooks on at /hooks/%s: a push to %s queues %s", host.title, host.name,
                 branch, target)


bp.record_once(_log_settings)


# --- answers ---------------------------------------------------------------------------------
class Refused(Exception):
    """The request is answered with an error status and nothing is queued."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@bp.errorhandler(Refused)
def refused(exc: Refused):
    return _answer(exc.status, error=str(exc))


def _answer(status: int, **body):
    return jsonify(body), status


def _ignored(reason: str):
    return _answer(200, ignored=reason)


def _secret(host: Host) -> str:
    """The endpoint's secret; without one the endpoint does not exist (never open)."""
    secret = current_app.config.get(host.secret)
    if not secret:
        raise Refused(404, f"{host.title} webhooks are off: {env_var(host.secret)} is not set")
    return secret


def _target(host: Host) -> str:
    try:
        return configured_target(current_app.config, host)
    except Misconfigured as exc:
        log.error("%s webhook refused: %s", host.title, exc)
        raise Refused(503, str(exc)) from None


def _check_makefile_has(host: Host, target: str) -> None:
    """Refuse (503, not recorded: the host's redelivery may try again once it is fixed) a
    configured target that the workers' makefile lacks, as POST /jobs does with a 400. If no
    worker lists its targets within TARGETS_WAIT, the push is queued: the worker checks the
    target when it starts."""
    missing = current_app.extensions["pool"].lacks_target(None, target)
    if missing:
        message = f"{env_var(host.target)}: {missing}"
        log.error("%s webhook refused: %s", host.title, message)
        raise Refused(503, message)


def _age_days(pushed_at) -> float | None:
    """Days since `pushed_at` (a push payload's `repository.pushed_at`, seconds since the
    epoch), or None if it is not a finite number (GitHub's pushes have one)."""
    pushed = json_numbers.finite(pushed_at)
    return None if pushed is None else (time.time() - pushed) / 86400


def _get(payload: dict, *keys: str):
    """payload[k1][k2]..., or None where the shape differs."""
    for key in keys:
        if not isinstance(payload, dict):
            return None
        payload = payload.get(key)
    return payload


def _delivery(*headers: str) -> str | None:
    for header in headers:
        value = request.headers.get(header, "").strip()
        if value:
            return value
    return None


# --- a push -----------------------------------------------------------------------------------
def on_push(host: Host, target: str, push: Push):
    """Queue `target` for a push to the wanted branch; ignore every other push."""
    ref = push.ref
    if not isinstance(ref, str) or not ref:
        raise Refused(400, "the push payload has no ref" if ref is None or ref == "" else
                      f"the push payload's ref must be a string (refs/heads/<branch>), not "
                      f"{json.dumps(ref)[:50]}")
    if ref.startswith("refs/tags/"):
        return _ignored(f"tag push {ref}")
    if not ref.startswith("refs/heads/"):
        return _ignored(f"{ref} is not a branch")
    branch = ref.removeprefix("refs/heads/")
    if push.deleted:
        return _ignored(f"branch {branch} was deleted")
    wanted = current_app.config.get(host.branch) or push.default_branch
    if not isinstance(wanted, str) or not wanted:
        raise Refused(400, f"the push payload names no default branch; set {env_var(host.branch)}")
    if branch != wanted:
        return _ignored(f"push to branch {branch}, not {wanted}")
    if push.delivery is not None and len(push.delivery) > MAX_DELIVERY_ID:
        raise Refused(400, f"delivery id longer than {MAX_DELIVERY_ID} characters")
    _check_makefile_has(host, target)
    store = current_app.extensions["store"]
    keys = [key for key in (push.delivery, push.signed) if key is not None]
    # The delivery is recorded with its job, all of its keys or none: a StoreError records
    # nothing, so the host's redelivery may try again.
    queued = current_app.extensions["dispatcher"].deliver(host.name, keys, target, SOURCE)
    if queued is None:  # the same delivery id, or the same signed body, as before
        replayed = push.delivery is None or not store.delivery_seen(host.name, push.delivery)
        shown = "with the same signed body as an earlier one" if replayed else push.delivery
        log.info("%s delivery %s seen before: not queued again", host.title, shown)
        return _ignored(f"duplicate delivery {shown}")
    job, coalesced = queued
    log.info("%s push to %s (delivery %s): job %s%s", host.title, branch, push.delivery,
             job.id, " (coalesced)" if coalesced else "")
    resp = jsonify({**job.to_dict(), "coalesced": coalesced})
    resp.status_code = 202
    resp.headers["Location"] = f"/jobs/{job.id}"
    return resp


def _is_commit(value) -> bool:
    return isinstance(value, str) and _COMMIT_ID.fullmatch(value) is not None


_COMMIT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # SHA-1, or a SHA-256 repository's


# --- the endpoints ------------------------------------------------------------------------------
@bp.post("/github")
def github():
    secret = _secret(GITHUB)
    body = request.get_data(cache=True)  # the raw bytes, as signed; nothing is parsed yet
    if not github_signature_ok(secret, body, request.headers.get("X-Hub-Signature-256")):
        raise Refused(401, "missing or wrong X-Hub-Signature-256 (HMAC-SHA256 of the body "
                           "with TRIGGER_GITHUB_SECRET)")
    target = _target(GITHUB)
    event = request.headers.get("X-GitHub-Event", "")
    signed = "sha256:" + hashlib.sha256(body).hexdigest()
    if event != "push":
        # Its signed body is remembered all the same: the event's name is not signed, and a
        # body with a `ref` (workflow_dispatch, ...) sent again as a push must not queue.
        current_app.extensions["store"].record_delivery(GITHUB.name, signed)
    if event == "ping":
        return _answer(200, ok=True, event="ping")
    if request.mimetype == "application/x-www-form-urlencoded":  # the webhook's other format
        payload = rules.json_object((parse_qs(body.decode("utf-8", "replace")).get("payload")
                                or [""])[0])
    else:
        payload = rules.json_object(body)
    if payload is None:
        raise Refused(400, "body must be a JSON object (content type application/json, or a "
                           "form with a `payload` field)")
    if event != "push":
        return _ignored(f"event {event or '(none)'} is not handled; only push is")
    if not (_is_commit(payload.get("before")) and _is_commit(payload.get("after"))
            and isinstance(payload.get("pusher"), dict)):
        # The event's name is not signed: another event's signed body (one that names a
        # branch, as workflow_dispatch's) sent as a push, one this controller never saw
        raise Refused(400, "not a push payload: a push has `before` and `after` commit ids "
                           "and a `pusher`")
    age = _age_days(_get(payload, "repository", "pushed_at"))
    if age is not None and age > PUSH_MAX_DAYS:
        # Its digest may have been forgotten (recorded for DELIVERY_DAYS): a push this old
        # can only be a captured one sent again.
        log.warning("GitHub push of %.0f days ago (repository.pushed_at): not queued", age)
        return _ignored(f"a push of {age:.0f} days ago: over {PUSH_MAX_DAYS} days old, it "
                        "cannot be told from a replay")
    return on_push(GITHUB, target, Push(
        ref=payload.get("ref"),
        deleted=payload.get("deleted") is True or payload.get("after") == ZERO_SHA,
        default_branch=_get(payload, "repository", "default_branch"),
        delivery=_delivery("X-GitHub-Delivery"),
        signed=signed))


@bp.post("/gitlab")
def gitlab():
    token = _secret(GITLAB)
    if not gitlab_token_ok(token, request.headers.get("X-Gitlab-Token")):
        raise Refused(401, "missing or wrong X-Gitlab-Token (the webhook's secret token, "
                           "TRIGGER_GITLAB_TOKEN)")
    target = _target(GITLAB)
    payload = rules.json_object(request.get_data(cache=True))
    if payload is None:
        raise Refused(400, "body must be a JSON object")
    event = request.headers.get("X-Gitlab-Event", "")
    if event != "Push Hook" or payload.get("object_kind") != "push":
        return _ignored(f"event {event or '(none)'} is not handled; only Push Hook is")
    return on_push(GITLAB, target, Push(
        ref=payload.get("ref"),
        deleted=payload.get("after") == ZERO_SHA,
        default_branch=_get(payload, "project", "default_branch"),
        delivery=_delivery("Idempotency-Key", "X-Gitlab-Event-UUID")))
