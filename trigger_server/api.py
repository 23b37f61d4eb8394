"""The public HTTP API: validation at the edge, JSON errors, one concern per view."""

from __future__ import annotations

import json
import math
import re
import time
from importlib import resources
from urllib.parse import parse_qsl

import requests
from flask import Blueprint, Response, abort, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, NotFound, RequestEntityTooLarge

from worker import rules

from . import hooks
from .dispatch import START_HERE_WAIT
from .store import Job, JobState, StoreError
from .waiting import LOG_CHUNK, TooBusy, follow_log, hang_up_check, stored_log, streamed

bp = Blueprint("api", __name__)

# POST /jobs with `wait`: the HTTP status tells how the job ended (curl --fail exits non-zero).
WAIT_STATUS = {
    JobState.SUCCEEDED: 200,
    JobState.FAILED: 422,
    JobState.CANCELLED: 409,
    JobState.LOST: 502,
}
JOB_FIELDS = {"target", "vars", "worker", "wait", "timeout", "source", "notify", "retries"}
MAX_RETRIES = 10
SOURCES = ("api", "cli")
OPENAPI = resources.files(__package__).joinpath("openapi.json").read_bytes()


def _store():
    return current_app.extensions["store"]


def _dispatcher():
    return current_app.extensions["dispatcher"]


def _pool():
    return current_app.extensions["pool"]


def error(status: int, message: str):
    return jsonify(error=message), status


# --- auth and errors --------------------------------------------------------------------
# Open without the API token: liveness, the API's description, and the webhooks (which carry
# their own signature or token, checked in hooks.py).
PUBLIC_PATHS = ("/healthz", "/openapi.json")


@bp.before_app_request
def require_token():
    token = current_app.config["API_TOKEN"]
    if not token or request.path in PUBLIC_PATHS or request.path.startswith("/hooks/"):
        return None
    given = request.headers.get("Authorization", "")
    if not rules.bearer_matches(given, token):
        return error(401, "missing or wrong API token (Authorization: Bearer ...)")
    return None


@bp.before_app_request
def refuse_long_bodies():
    """A body without Content-Length (chunked) over MAX_CONTENT_LENGTH is a 413, as one with it
    is. werkzeug stops such a stream at the limit but raises only on a read *past* it, so a
    whole-body read ending there returns the first MAX_CONTENT_LENGTH bytes as if they were all:
    read one byte more, into the request's cache (what get_data, get_json and form use). Only
    for POST, the one method whose views read a body (a GET's is left to gunicorn)."""
    hook = hooks.body_limit(request.path, current_app.config)
    if hook is not None:
        request.max_content_length = hook[0]
    limit = request.max_content_length
    if request.method != "POST" or limit is None or request.content_length is not None:
        return None  # a Content-Length over the limit is refused by werkzeug on first read
    request.max_content_length = limit + 1
    try:
        size = len(request.get_data(cache=True))
    except HTTPException:
        raise
    except Exception:  # gunicorn's errors for a malformed or cut-off chunked body
        abort(400, "malformed request body (chunked transfer encoding)")
    finally:
        request.max_content_length = limit
    if size > limit:
        abort(413, _too_large(limit))
    return None


def _too_large(limit: int) -> str:
    hook = hooks.body_limit(request.path, current_app.config)
    return f"request body over {limit} bytes ({hook[1] if hook else 'TRIGGER_MAX_BODY'})"


_NOT_A_JOB_ID = re.compile(r"/jobs/([^/]+)(?:/log)?")


@bp.app_errorhandler(HTTPException)
def http_error(exc: HTTPException):
    if isinstance(exc, RequestEntityTooLarge) and request.max_content_length is not None:
        # werkzeug's own words ("The data value transmitted exceeds the capacity limit.") for
        # a Content-Length over the limit; ours, as for a chunked body (refuse_long_bodies)
        return error(413, _too_large(request.max_content_length))
    bad_id = _NOT_A_JOB_ID.fullmatch(request.path) if isinstance(exc, NotFound) else None
    if bad_id and request.url_rule is None:  # /jobs/abc, /jobs/-1/log: no route took it
        return error(404, f"no job {bad_id[1]!r}: job ids are positive integers")
    return error(exc.code or 500, exc.description or exc.name)


@bp.app_errorhandler(rules.RuleError)
def rule_error(exc: rules.RuleError):
    return error(400, str(exc))


@bp.app_errorhandler(TooBusy)
def too_busy(exc: TooBusy):
    resp, status = error(429, str(exc))
    resp.headers["Retry-After"] = "5"
    return resp, status


@bp.app_errorhandler(StoreError)
def store_error(exc: StoreError):
    return error(503, str(exc))


@bp.app_errorhandler(Exception)
def unexpected(exc: Exception):
    current_app.logger.error("unexpected error on %s %s", request.method, request.path,
                             exc_info=exc)
    return error(500, f"internal error: {type(exc).__name__}")


# --- jobs ---------------------------------------------------------------------------------
def _job_request() -> dict:
    """The fields of POST /jobs, from a JSON object or a form (`curl -d target=html`)."""
    raw = request.get_data(cache=True)  # (read first: the form is then parsed from it)
    if request.mimetype == "application/json":
        body = rules.json_object(raw)
        if body is None:
            abort(400, f"body must be a JSON object (valid UTF-8 JSON): {_not_an_object(raw)}")
        return body
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data") or (
            not raw):
        if raw and not request.form:  # werkzeug drops a form it cannot read, silently
            abort(400, "the form could not be read: a form must be UTF-8 text, and a "
                       "multipart body well formed")
        forms = [("the form", raw)] if raw and request.mimetype == \
            "application/x-www-form-urlencoded" else []
        for what, encoded in (*forms, ("the query string", request.query_string)):
            try:  # werkzeug keeps %-escapes that are not UTF-8 as they are: `sit%E9`
                parse_qsl(encoded.decode("utf-8"), keep_blank_values=True, errors="strict")
            except ValueError:  # (UnicodeDecodeError too)
                abort(400, f"{what}'s %-escapes must encode UTF-8 text")
        form = request.values
        if "vars" in form:
            abort(400, "a form gives each variable as a field var=NAME=VALUE (vars is for "
                       "JSON bodies)")
        body = {k: form.get(k) for k in JOB_FIELDS if k in form and k != "var"}
        assignments = form.getlist("var")
        if assignments:
            body["vars"] = dict(rules.parse_assignment(a) for a in assignments)
        unknown = set(form) - JOB_FIELDS - {"var"}
        if any(key.lstrip().startswith("{") for key in unknown & set(request.form)):
            abort(400, "the body looks like JSON but came as a form (curl -d sends "
                       "application/x-www-form-urlencoded): add -H 'Content-Type: "
                       "application/json', or send fields, e.g. -d target=site")
        if unknown:
            abort(400, f"unknown field(s): {', '.join(sorted(unknown))}")
        for key in ("wait", "timeout"):
            if key in body:
                body[key] = _form_number(key, body[key])
        return body
    abort(415, "send application/json or a form (application/x-www-form-urlencoded)")


def _not_an_object(data: bytes) -> str:
    """Why a body is not a JSON object, in a few words."""
    try:
        value = json.loads(data)
    except RecursionError:
        return "nested too deeply"
    except ValueError as exc:
        return str(exc)[:200]
    return f"a JSON {type(value).__name__}, not an object"


def _form_number(key: str, text: str):
    if key == "wait" and text.lower() in ("1", "true", "yes", ""):
        return True
    if key == "wait" and text.lower() in ("0", "false", "no"):
        return False
    try:
        return float(text)
    except ValueError:
        abort(400, f"{key} must be a number")


def _positive(key: str, value, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        abort(400, f"{key} must be a number of seconds")
    try:
        seconds = float(value)
    except OverflowError:  # an integer beyond any float
        abort(400, f"{key} must be {'>= 0' if allow_zero else '> 0'}" if value < 0
              else f"{key} is too large")
    if not math.isfinite(seconds):  # json and float() take NaN and Infinity; JSON cannot carry them
        abort(400, f"{key} must be a finite number of seconds")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        abort(400, f"{key} must be {'>= 0' if allow_zero else '> 0'}")
    return seconds


def _retries(value) -> int:
    if isinstance(value, str):  # from a form
        value = rules.parse_natural(value, MAX_RETRIES)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RETRIES:
        abort(400, f"retries must be an integer from 0 to {MAX_RETRIES}")
    return value


def _notify_url(value) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not value.startswith(("http://", "https://")) or any(
            c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value) or len(value) > 2000:
        abort(400, "notify must be an http(s) URL")
    rules.check_utf8("notify", value)
    try:
        requests.Request("POST", value).prepare()
    except (requests.RequestException, ValueError) as exc:
        abort(400, f"notify is not a usable URL: {exc}")
    return value


def _or_default(value, default):
    """A field's value, or `default` for one left out, null, "" or false; never for {} or []
    (refused by the field's own check, not read as "left out")."""
    return default if value is None or value == "" or value is False else value


def _validate(body: dict) -> tuple[str, dict, str | None, float | None, str, float]:
    unknown = set(body) - JOB_FIELDS
    if unknown:
        abort(400, f"unknown field(s): {', '.join(sorted(unknown))}")
    target = rules.check_target_syntax(body.get("target"))
    variables = rules.check_vars_syntax(body.get("vars"))
    selector = _or_default(body.get("worker"), None)
    if selector is not None and not isinstance(selector, str):
        abort(400, "worker must be a string: a worker's host name or URL")
    if selector is not None:
        rules.check_utf8("worker", selector)
    pool = _pool()
    if not pool.known(selector):
        abort(400, f"unknown worker {selector!r}; see GET /workers")
    timeout = body.get("timeout")
    if timeout is not None:
        timeout = _positive("timeout", timeout)
        limit = pool.max_timeout(selector)
        if limit and timeout > limit:
            abort(400, f"timeout must be at most {limit:g} s (the worker's WORKER_JOB_TIMEOUT)")
    source = _or_default(body.get("source"), "api")
    if source not in SOURCES:
        abort(400, f"source must be one of {', '.join(SOURCES)}")
    wait = _or_default(body.get("wait"), 0)
    max_wait = current_app.config["MAX_WAIT"]
    wait = max_wait if wait is True else min(_positive("wait", wait, allow_zero=True), max_wait)
    missing = pool.lacks_target(selector, target) or pool.refuses_vars(selector, variables)
    if missing:
        abort(400, missing)
    return target, variables, selector, timeout, source, wait


@bp.post("/jobs")
def create_job():
    body = _job_request()
    target, variables, selector, timeout, source, wait = _validate(body)
    notify = _notify_url(body.get("notify"))
    retries = _retries(body.get("retries", 0))
    slots = current_app.extensions["wait_slots"]
    if wait:
        slots.take()
    try:
        deadline = time.monotonic() + wait
        job, coalesced = _dispatcher().submit(target, variables, selector, source, timeout,
                                              notify, retries,
                                              start_here=wait >= START_HERE_WAIT)
        status = 202
        if wait:
            ended = _dispatcher().wait_for_end(job.id, max(0.0, deadline - time.monotonic()),
                                               gone=hang_up_check())
            if ended is None:  # forgotten meanwhile (a very small TRIGGER_KEEP_JOBS)
                abort(404, f"job {job.id} ended and was forgotten (TRIGGER_KEEP_JOBS)")
            job, status = ended, WAIT_STATUS.get(ended.state, 202)
    finally:
        if wait:
            slots.give()
    if coalesced and not wait and job.state is JobState.QUEUED and job.worker is None:
        return current_app.extensions["joined"].answer(job)
    resp = jsonify({**job.to_dict(), "coalesced": coalesced})
    resp.status_code = status
    resp.headers["Location"] = f"/jobs/{job.id}"
    return resp


def _int_arg(name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return default
    value = rules.parse_natural(raw, high)
    if value is None or value < low:
        abort(400, f"{name} must be an integer from {low} to {high}")
    return value


@bp.get("/jobs")
def list_jobs():
    state = request.args.get("state")
    if state is not None and state not in {s.value for s in JobState}:
        abort(400, f"state must be one of {', '.join(s.value for s in JobState)}")
    limit = _int_arg("limit", 50, 1, 500)
    before = _int_arg("before", None, 1, MAX_ID)
    jobs = _store().list_jobs(state=state, target=request.args.get("target"), limit=limit,
                              before=before)
    next_before = jobs[-1].id if len(jobs) == limit else None
    return jsonify(jobs=[j.to_dict() for j in jobs], next_before=next_before)


MAX_ID = 2**63 - 1  # SQLite's largest integer (and so the largest log offset too)


def _job_or_404(job_id: int) -> Job:
    job = _store().get_job(job_id) if job_id <= MAX_ID else None
    if job is None:
        abort(404, f"no job {job_id}")
    return job


@bp.get("/jobs/<int:job_id>")
def get_job(job_id: int):
    return jsonify(_job_or_404(job_id).to_dict())


@bp.delete("/jobs/<int:job_id>")
def cancel_job(job_id: int):
    job = _job_or_404(job_id)
    if job.state.ended or not _dispatcher().cancel(job):
        job = _job_or_404(job_id)
        if job.state.ended:
            abort(409, f"job {job_id} has already ended ({job.state.value})")
        resp = jsonify(error=f"job {job_id} is changing hands (being started or queued "
                             "again); retry")  # never a 202 for a cancel nobody carries out
        resp.status_code = 503
        resp.headers["Retry-After"] = "1"
        return resp
    return jsonify(_job_or_404(job_id).to_dict()), 202


@bp.get("/jobs/<int:job_id>/log")
def job_log(job_id: int):
    job = _job_or_404(job_id)
    sse = request.accept_mimetypes.best == "text/event-stream"
    start = request.headers.get("Last-Event-ID") if sse else None
    offset = rules.parse_natural(start or request.args.get("offset", "0"), MAX_ID)
    if offset is None:  # checked here: once the stream has begun, an error cannot be a 400
        abort(400, f"offset (or Last-Event-ID) must be a byte offset from 0 to {MAX_ID}")
    follow = sse or request.args.get("follow") in ("1", "true")
    slots = current_app.extensions["wait_slots"]
    if not follow:  # the log as stored now; a big one in pieces, holding a slot meanwhile
        end = job.log_size
        data = _store().read_log(job_id, offset, limit=min(LOG_CHUNK, max(0, end - offset)))
        if offset + len(data) >= end:
            return Response(data, mimetype="text/plain")
        slots.take()
        chunks = stored_log(_store(), job_id, offset, end, data)
        return streamed(chunks, slots, mimetype="text/plain")
    slots.take()
    chunks = follow_log(_store(), _dispatcher(), current_app.extensions["log_tail"], job_id,
                        offset, sse, hang_up_check())
    return streamed(chunks, slots, mimetype="text/event-stream" if sse else "text/plain",
                    headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


# --- workers and targets ---------------------------------------------------------------------
@bp.get("/workers")
def list_workers():
    pool = _pool()
    rows = [w.to_dict() for w in pool.all()]
    rows += [{"url": url, "name": url, "healthy": False, "busy": False, "jobs": [],
              "lock": None, "last_error": message} for url, message in pool.errors().items()]
    return jsonify(workers=rows)


@bp.get("/targets")
def list_targets():
    selector = request.args.get("worker") or None
    if not _pool().known(selector):
        abort(400, f"unknown worker {selector!r}; see GET /workers")
    found = _pool().targets(selector)
    if found is None:
        why = _pool().why_unlisted(selector)
        abort(503, "no healthy worker listed its targets" + (f" ({why})" if why else "")
              + "; see GET /workers")
    return jsonify(targets=found)


@bp.get("/schedules")
def list_schedules():
    return jsonify(schedules=current_app.extensions["scheduler"].describe())


@bp.get("/openapi.json")
def openapi():
    return current_app.response_class(OPENAPI, mimetype="application/json")


@bp.get("/healthz")
def healthz():
    healthy = sum(1 for w in _pool().all() if w.healthy)
    return jsonify(ok=True, workers_healthy=healthy)
