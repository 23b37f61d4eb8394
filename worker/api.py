"""The worker's HTTP API, spoken only by the controller (and by nothing without the token)."""

from __future__ import annotations

import json
import math
import os
import time

from flask import Blueprint, Response, abort, current_app, jsonify, request, stream_with_context
from werkzeug.exceptions import HTTPException

from . import rules
from .makefile import MakefileError
from .runner import (
    Busy,
    Run,
    RunExists,
    RunStarting,
    RunState,
    ShuttingDown,
    StartAbandoned,
    UnknownRun,
)
from .serving import hung_up

bp = Blueprint("worker", __name__)

# Seconds between looks at a growing log: from FOLLOW_POLL_MIN right after new output, doubling
# while there is none, up to FOLLOW_POLL. The end of a run wakes a follower at once.
FOLLOW_POLL_MIN = 0.01
FOLLOW_POLL = 0.05
CHUNK = 256 * 1024
TICK = 5.0  # a followed run that printed nothing for this long gets a `tick` frame
FRAMES_TYPE = "application/x-maketrigger-run"  # see trigger_server/worker_http.py
MAX_OFFSET = 2**63 - 1  # the largest file offset (off_t); a file system may allow less


def _runner():
    return current_app.extensions["runner"]


def _run_json(run: Run, log_size: int | None = None) -> dict:
    """The run as the controller sees it: no process details, how long its log is, and `now`,
    this worker's clock as it answers (the controller takes the age of an end from it, so that
    clocks that differ between hosts do not matter)."""
    d = run.record()
    for private in ("pid", "pid_start", "owner_pid"):
        d.pop(private)
    if log_size is None:
        try:
            log_size = os.path.getsize(_runner().log_path(run.id))
        except OSError:
            log_size = 0
    d["log_size"] = log_size
    d["now"] = time.time()
    return d


@bp.before_app_request
def require_token():
    token = current_app.config["TOKEN"]
    if not token:
        return None
    given = request.headers.get("Authorization", "")
    if not rules.bearer_matches(given, token):
        return jsonify(error="missing or wrong worker token"), 401
    return None


@bp.app_errorhandler(HTTPException)
def http_error(exc: HTTPException):
    return jsonify(error=exc.description), exc.code


@bp.app_errorhandler(Exception)
def unexpected(exc: Exception):
    current_app.logger.error("unexpected error on %s %s", request.method, request.path,
                             exc_info=exc)
    return jsonify(error=f"internal error: {type(exc).__name__}: {exc}"), 500


@bp.app_errorhandler(rules.RuleError)
def rule_error(exc):
    return jsonify(error=str(exc)), 400


@bp.app_errorhandler(Busy)
def busy(exc):
    return jsonify(error=str(exc), reason="busy"), 409


@bp.app_errorhandler(RunExists)
def exists(exc):
    return jsonify(error=str(exc), reason="exists"), 409


@bp.app_errorhandler(UnknownRun)
def unknown_run(exc):
    return jsonify(error=f"no run {exc.args[0]} on this worker"), 404


@bp.app_errorhandler(MakefileError)
def unreadable_makefile(exc):
    return jsonify(error=str(exc)), 422


@bp.app_errorhandler(RunStarting)
def starting(exc):
    return jsonify(error=str(exc), reason="starting"), 503


@bp.app_errorhandler(StartAbandoned)
def abandoned(exc):  # (its sender is gone: the answer is for the log, if anyone's)
    return jsonify(error=str(exc), reason="abandoned"), 409


@bp.app_errorhandler(ShuttingDown)
def unavailable(exc):
    return jsonify(error=str(exc), reason="stopping"), 503


@bp.get("/healthz")
def healthz():
    cfg = current_app.config
    if _runner().stopping:  # not a worker to start builds on: the controller looks elsewhere
        raise ShuttingDown("the worker is shutting down")
    runs = _runner().active()
    body = {"ok": True, "busy": bool(runs), "runs": [r.id for r in runs], "lock": cfg["LOCK"],
            "job_timeout": cfg["JOB_TIMEOUT"], "workdir": cfg["WORKDIR"],
            "vars": list(cfg["VARS"])}
    watcher = current_app.extensions["watcher"]
    if watcher.rules:
        ack = rules.parse_natural(request.args.get("ack", "0"), MAX_OFFSET)
        if ack is None:
            abort(400, f"ack must be an integer from 0 to {MAX_OFFSET} (the last seq taken)")
        # `now`: this worker's clock, which the events' changed_at are on (as in _run_json)
        body["watch"] = {"boot": watcher.boot, "events": watcher.pending(ack), "now": time.time()}
    return jsonify(body)


def _allowed(listed) -> dict[str, str]:
    """Of the listed targets, the buildable ones (after WORKER_TARGETS), with descriptions."""
    patterns = current_app.config["TARGETS"]
    return {t.name: t.description for t in listed if rules.target_allowed(t.name, patterns)}


@bp.get("/targets")
def targets():
    listed, stale = current_app.extensions["catalog"].read()
    return jsonify(targets=[{"name": n, "description": d} for n, d in _allowed(listed).items()],
                   stale=stale)


def check_request(body: dict) -> tuple[str, dict, float | None]:
    """Everything the worker enforces before make may see a request."""
    cfg = current_app.config
    target = rules.check_target_syntax(body.get("target"))
    variables = rules.check_vars_syntax(body.get("vars"))
    rules.check_vars_allowed(variables, cfg["VARS"])
    if not rules.target_allowed(target, cfg["TARGETS"]):
        raise rules.RuleError(f"target {target} is not allowed by WORKER_TARGETS")
    listed, stale = current_app.extensions["catalog"].read()
    if target not in _allowed(listed):
        if stale:  # perhaps added since: read again once the build holding the workspace ends
            raise Busy("the workspace is busy with another build, and its makefile changed "
                       "since its targets were read")
        raise rules.RuleError(f"target {target} is not defined in the workspace's makefile")
    timeout = body.get("timeout")
    if timeout is not None:
        if (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
                or isinstance(timeout, float) and not math.isfinite(timeout)):  # NaN: not <= 0
            raise rules.RuleError("timeout must be a positive, finite number of seconds")
        if timeout > cfg["JOB_TIMEOUT"]:
            raise rules.RuleError(f"timeout must be at most {cfg['JOB_TIMEOUT']:g} s "
                                  "(WORKER_JOB_TIMEOUT)")
    return target, variables, timeout


@bp.post("/runs")
def start_run():
    """Start a run. With `"follow": true` the answer is the run followed to its end, as run
    frames (trigger_server/worker_http.py), so one request carries a whole job."""
    body = rules.json_object(request.get_data(cache=True))
    if body is None:
        abort(400, "body must be a JSON object")
    run_id = body.get("id")
    if not isinstance(run_id, str):
        raise rules.RuleError("id must be a string")
    runner = _runner()
    sock = request.environ.get("gunicorn.socket")
    # From here on, a question about the run waits for this start, while its sender does.
    with runner.starting(run_id, lambda: not hung_up(sock)) as wanted:
        target, variables, timeout = check_request(body)
        run = runner.start(run_id, target, variables, timeout, wanted=wanted)
    if body.get("follow") is True:  # the log is opened in the stream: the run has started
        path = runner.log_path(run.id)
        return _frames(run, lambda: open(path, "rb", buffering=0), started=True), 201
    return jsonify(_run_json(run)), 201


@bp.get("/runs/<run_id>")
def get_run(run_id: str):
    run = _runner().get(run_id)
    if run.state is not RunState.RUNNING:
        run.reported = True
    return jsonify(_run_json(run))


@bp.delete("/runs/<run_id>")
def cancel_run(run_id: str):
    return jsonify(_run_json(_runner().cancel(run_id))), 202


@bp.get("/runs/<run_id>/log")
def run_log(run_id: str):
    """The log from `offset`: plain bytes, or with `frames=1` run frames that end with the
    run's final state (`follow=1` in both cases follows it as it grows)."""
    runner = _runner()
    run = runner.get(run_id)
    offset = rules.parse_natural(request.args.get("offset", "0"), MAX_OFFSET)
    if offset is None:
        abort(400, f"offset must be an integer from 0 to {MAX_OFFSET}")
    follow = request.args.get("follow") in ("1", "true")
    try:
        f = open(runner.log_path(run.id), "rb", buffering=0)  # noqa: SIM115 (the stream closes it)
    except FileNotFoundError:
        abort(404, f"the log of run {run_id} is gone")
    try:
        f.seek(offset)
    except OSError:  # EINVAL: beyond the largest file this file system can hold
        f.close()
        abort(400, f"offset {offset} is beyond any file on this worker's file system")
    if follow and request.args.get("frames") in ("1", "true"):
        return _frames(run, lambda: f, started=False)

    def chunks():
        with f:
            while True:
                data = f.read(CHUNK)
                if data:
                    yield data
                    continue
                if follow:
                    runner.refresh(run)  # (a run another worker process runs)
                if not follow or run.done.is_set():
                    rest = f.read()  # anything written just before the end
                    if rest:
                        yield rest
                    return
                run.done.wait(FOLLOW_POLL)

    return Response(stream_with_context(chunks()), mimetype="text/plain",
                    headers={"X-Run-State": run.state.value, "Cache-Control": "no-store"})


def _frames(run: Run, log_file, *, started: bool) -> Response:
    """Run frames (trigger_server/worker_http.py) of the log file that `log_file()` gives (read
    from where it stands; called in the stream), until the run has ended and its last byte was
    sent; a `tick` when nothing was sent for TICK seconds.
    The end frame's log_size is the log file's size then (more than was sent if something
    outlived the build and still writes: the controller follows again)."""
    first = b"run " + json.dumps(_run_json(run)).encode() + b"\n" if started else b""
    runner = _runner()

    def frames():
        # Frames that are ready together go out in one piece (one write, one wake-up of the
        # reader): the run with the log's first bytes, the log's last bytes with the end.
        sent, poll, pending = time.monotonic(), FOLLOW_POLL_MIN, first
        with runner.following(run), log_file() as f:
            while True:
                ended = run.done.is_set()  # looked at first: a read after it sees all of make's
                data = f.read(CHUNK)
                if data and (not ended or len(data) == CHUNK):
                    yield pending + b"log %d\n" % len(data) + data
                    sent, poll, pending = time.monotonic(), FOLLOW_POLL_MIN, b""
                    continue
                if ended:
                    data += f.read()  # anything written just before the end (or after it)
                    if data:
                        pending += b"log %d\n" % len(data) + data
                    end = _run_json(run, os.fstat(f.fileno()).st_size)
                    # Reported once it is on its way (the shutdown's wait for the controller
                    # to hear the end is a courtesy bounded by a linger anyway).
                    run.reported = True
                    yield pending + b"end " + json.dumps(end).encode() + b"\n"
                    return
                if pending:
                    yield pending  # nothing logged yet: the start is news enough
                    pending = b""
                if time.monotonic() - sent >= TICK:
                    yield b"tick\n"
                    sent = time.monotonic()
                runner.refresh(run)  # (a run another worker process runs)
                run.done.wait(poll)
                poll = min(poll * 2, FOLLOW_POLL)

    return Response(frames(), mimetype=FRAMES_TYPE, headers={"Cache-Control": "no-store"})
