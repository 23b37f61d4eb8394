"""`trigger`: the command line for a maketrigger controller.

Exit statuses never collide with make's own 1 and 2, so `trigger run X --wait` in cron or a
script tells a failed build from a failed trigger:

    0    the build succeeded (or, without --wait, the job was accepted)
    N    with --wait: make's own exit status when the build failed
    64   usage error (bad options or arguments)
    65   rejected by the server or by the CLI's own checks (bad target, variable, token...), or
         with --wait by the worker when the job started
    69   server unreachable, or it answered with a server error, as too busy (429) or not as
         a maketrigger controller does (another server at the URL); while
         following a job (--wait, --follow, log --follow) only once unreachable or failing
         for GIVE_UP seconds (too busy to stream, it is waited for)
    124  timed out (--timeout elapsed, or the job hit its own time limit)
    125  the job was cancelled or lost, or failed without an exit status
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import json
import sys
import time

import click
import requests

from worker import rules

EXIT_USAGE, EXIT_REJECTED, EXIT_UNREACHABLE, EXIT_TIMEOUT, EXIT_ENDED = 64, 65, 69, 124, 125
GIVE_UP = 120.0  # seconds a follow keeps trying to reach the server (a restart takes a few)
BACKOFF = (0.5, 5.0)  # first and longest pause between those tries


class Abort(Exception):
    def __init__(self, message: str, code: int, retry_after: float | None = None):
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after  # the server was too busy (429): try again after this


class Api:
    """The controller's HTTP API, with its errors turned into exit statuses."""

    def __init__(self, url: str, token: str):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, timeout: float = 30, **kw) -> requests.Response:
        try:
            resp = self.session.request(method, self.url + path,
                                        timeout=(min(5, timeout), timeout), **kw)
        except requests.Timeout as exc:
            raise Abort(f"server {self.url} did not answer in time: {exc}",
                        EXIT_UNREACHABLE) from None
        except requests.RequestException as exc:
            raise Abort(f"cannot reach server {self.url}: {_reason(exc)}",
                        EXIT_UNREACHABLE) from None
        if resp.status_code >= 400 and not (method == "POST" and path == "/jobs"):
            self.fail(resp)
        return resp

    @staticmethod
    def fail(resp: requests.Response):
        try:
            body = resp.json()
        except ValueError:
            body = None
        ours = isinstance(body, dict) and isinstance(body.get("error"), str)
        message = body["error"] if ours else resp.text.strip()[:200] or resp.reason
        if resp.status_code == 429:  # a temporary state of the server, not a refusal
            try:
                after = min(max(float(resp.headers.get("Retry-After", "")), 0.5), 30.0)
            except ValueError:
                after = 5.0
            raise Abort(f"server said 429: {message}", EXIT_UNREACHABLE, retry_after=after)
        if not ours and resp.status_code < 500:  # another server at --url, a proxy's page
            raise Abort(f"server said {resp.status_code}, not as a maketrigger controller does "
                        f"(is --url right?): {message}", EXIT_UNREACHABLE)
        code = EXIT_UNREACHABLE if resp.status_code >= 500 else EXIT_REJECTED
        raise Abort(f"server said {resp.status_code}: {message}", code)

    def json(self, method: str, path: str, **kw) -> dict:
        return answer(self.call(method, path, **kw))


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests error, without urllib3's pool and object names:
    "Failed to establish a new connection: [Errno 111] Connection refused"."""
    for _ in range(8):
        inner = getattr(exc, "reason", None)
        if inner is None and exc.args and isinstance(exc.args[0], BaseException):
            inner = exc.args[0]
        if not isinstance(inner, BaseException) or inner is exc:
            break
        exc = inner
    text = str(exc)
    if text.startswith(("HTTPConnection(", "HTTPSConnection(")) and "): " in text:
        text = text.split("): ", 1)[1]
    return text


class NotTheApi(Exception):
    """The server answered, but not as maketrigger's API does (another server at the URL, a
    proxy's page): exit 69, as for a server that cannot be used, not a traceback and 1."""


def answer(resp: requests.Response) -> dict:
    """The JSON object of an answer."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        kind = resp.headers.get("Content-Type", "no content type")
        raise NotTheApi(f"{resp.status_code} with a body that is not a JSON object ({kind})")
    return body


def a_job(body: dict) -> dict:
    """`body`, if it is a job as the API shows one."""
    if not isinstance(body.get("id"), int) or not isinstance(body.get("state"), str):
        raise NotTheApi(f"an answer that is not a job: {json.dumps(body)[:200]}")
    return body


def job_exit(job: dict) -> int:
    """The exit status for a job that has ended."""
    state, error = job["state"], job.get("error") or ""
    if state == "succeeded":
        return 0
    if state == "failed" and error.startswith("timed out"):
        return EXIT_TIMEOUT  # make's own status then only says it was stopped
    if state == "failed" and job.get("exit_code"):
        return job["exit_code"]
    if state == "failed" and error.startswith("rejected"):
        return EXIT_REJECTED
    return EXIT_ENDED


LAST_LOOK = 2.0  # seconds the look at a job's state may take once --timeout has elapsed


def follow(api: Api, job_id: int, deadline: float | None, echo: bool) -> dict:
    """Stream the job's log (printing it if `echo`) until it ends; the job's final JSON. A
    stream that breaks or goes quiet is taken up again at once from where it was; a server that
    cannot be reached, fails or is too busy to stream is tried again with growing pauses (its
    job looked at meanwhile: one that answers that is waited for), until GIVE_UP seconds of
    that (or the deadline) end the follow."""
    offset = 0
    trouble_since: float | None = None
    pause = BACKOFF[0]
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            job = _look(api, job_id, timeout=LAST_LOOK)  # not a wait beyond --timeout
            if job is not None and job["state"] not in ("queued", "running"):
                if echo and job.get("log_size", 0) > offset:  # it ended just now: the rest
                    _print_rest(api, job_id, offset)
                return job
            state = f"still {job['state']}" if job else "not known to have ended"
            raise Abort(f"job {job_id} {state} after --timeout", EXIT_TIMEOUT)
        read_timeout = 20 if left is None else max(0.1, min(left, 20))
        try:
            resp = api.call("GET", f"/jobs/{job_id}/log", timeout=read_timeout, stream=True,
                            params={"offset": offset, "follow": 1})
            began, start = time.monotonic(), offset
            with resp:
                try:
                    for chunk in resp.iter_content(chunk_size=None):
                        offset += len(chunk)
                        if echo:
                            sys.stdout.buffer.write(chunk)
                            sys.stdout.flush()
                        if deadline is not None and time.monotonic() >= deadline:
                            break  # a build that keeps printing: --timeout all the same
                except requests.RequestException as exc:
                    # A quiet build (no byte for 20 s) or a dropped link: again, at once,
                    # unless it broke straight away with nothing sent (then as any trouble).
                    if offset > start or time.monotonic() - began >= 1.0:
                        continue
                    raise Abort(f"the log stream broke: {exc}", EXIT_UNREACHABLE) from None
            job = api.json("GET", f"/jobs/{job_id}")
        except Abort as exc:
            if exc.code != EXIT_UNREACHABLE:
                raise
            job = _look(api, job_id) if exc.retry_after is not None else None
            if job is not None and job["state"] not in ("queued", "running"):
                return job  # (its log's end unprinted: the server had no room to send it)
            now = time.monotonic()
            # A server that answers, only too busy to stream, is waited for however long.
            trouble_since = None if job is not None else trouble_since or now
            if trouble_since is not None and now - trouble_since >= GIVE_UP:
                raise Abort(f"{exc} (for {GIVE_UP:g} s; the job goes on: trigger status "
                            f"{job_id})", EXIT_UNREACHABLE) from None
            wait = exc.retry_after or pause
            pause = min(pause * 2, BACKOFF[1])
            time.sleep(wait if left is None else max(0.0, min(wait, left)))
            continue
        trouble_since = None
        if job["state"] not in ("queued", "running"):
            return job
        if offset > start:
            pause = BACKOFF[0]
        else:  # the stream ended with nothing, its job not: a stopping server ends follows
            time.sleep(pause if left is None else max(0.0, min(pause, left)))
            pause = min(pause * 2, BACKOFF[1])


def _print_rest(api: Api, job_id: int, offset: int) -> None:
    """The log from `offset` as stored now, if the server gives it within LAST_LOOK."""
    try:
        resp = api.call("GET", f"/jobs/{job_id}/log", timeout=LAST_LOOK,
                        params={"offset": offset})
    except Abort:
        return
    sys.stdout.buffer.write(resp.content)
    sys.stdout.flush()


def _look(api: Api, job_id: int, timeout: float = 30) -> dict | None:
    """The job, if the server answers at all (within `timeout` seconds)."""
    try:
        return api.json("GET", f"/jobs/{job_id}", timeout=timeout)
    except Abort:
        return None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="TRIGGER_URL", default="http://localhost:8080", show_default=True,
              help="The controller (env TRIGGER_URL).")
@click.option("--token", envvar="TRIGGER_API_TOKEN", default="", show_default=False,
              help="API token (env TRIGGER_API_TOKEN).")
@click.pass_context
def cli(ctx: click.Context, url: str, token: str) -> None:
    """Trigger `make` builds on maketrigger workers and follow them."""
    if not url.startswith(("http://", "https://")):
        raise click.BadParameter(f"{url!r} must start with http:// or https://",
                                 param_hint="--url / TRIGGER_URL")
    ctx.obj = Api(url, token)


@cli.command()
@click.argument("target")
@click.argument("assignments", nargs=-1, metavar="[NAME=VALUE]...")
@click.option("--wait", is_flag=True, help="Wait for the end; exit with make's status.")
@click.option("--follow", "-f", "follow_log", is_flag=True,
              help="Print the log as it grows (implies --wait).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              help="Seconds to wait at most (the CLI's limit, not the job's).")
@click.option("--job-timeout", type=click.FloatRange(min=0, min_open=True),
              help="The job's own time limit in seconds.")
@click.option("--worker", help="Build on this worker (host name or URL).")
@click.pass_obj
def run(api: Api, target, assignments, wait, follow_log, timeout, job_timeout, worker):
    """Queue `make TARGET`, optionally waiting for it to end."""
    try:
        rules.check_target_syntax(target)
        variables = dict(rules.parse_assignment(a) for a in assignments)
    except rules.RuleError as exc:
        raise Abort(str(exc), EXIT_REJECTED) from None
    body = {"target": target, "vars": variables, "source": "cli"}
    if worker:
        body["worker"] = worker
    if job_timeout:
        body["timeout"] = job_timeout
    resp = api.call("POST", "/jobs", json=body)
    if resp.status_code >= 400:
        api.fail(resp)
    job = a_job(answer(resp))
    note = " (joined an identical queued job)" if job.get("coalesced") else ""
    click.echo(f"job {job['id']}: {target} {job['state']}{note}", err=True)
    if not (wait or follow_log):
        click.echo(job["id"])
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    job = follow(api, job["id"], deadline, echo=follow_log)
    detail = f" ({job['error']})" if job.get("error") else ""
    click.echo(f"job {job['id']}: {job['state']}{detail}", err=True)
    sys.exit(job_exit(job))


@cli.command()
@click.argument("job_id", type=int, required=False)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 500))
@click.pass_obj
def status(api: Api, job_id, limit):
    """One job as JSON, or a table of the latest jobs."""
    if job_id is not None:
        click.echo(json.dumps(a_job(api.json("GET", f"/jobs/{job_id}")), indent=2))
        return
    jobs = api.json("GET", "/jobs", params={"limit": limit})["jobs"]
    click.echo(f"{'ID':>6}  {'STATE':<10} {'EXIT':>4}  {'SOURCE':<8} {'TARGET':<24} CREATED")
    for j in jobs:
        code = "" if j["exit_code"] is None else j["exit_code"]
        click.echo(f"{j['id']:>6}  {j['state']:<10} {code:>4}  {j['source']:<8} "
                   f"{j['target']:<24} {j['created_at']}")


@cli.command()
@click.argument("job_id", type=int)
@click.option("--follow", "-f", "follow_log", is_flag=True, help="Keep printing until it ends.")
@click.pass_obj
def log(api: Api, job_id, follow_log):
    """Print a job's log."""
    if follow_log:
        sys.exit(job_exit(follow(api, job_id, None, echo=True)))
    resp = api.call("GET", f"/jobs/{job_id}/log")
    if not resp.headers.get("Content-Type", "").startswith("text/plain"):
        raise NotTheApi(f"a log that is not text/plain ({resp.headers.get('Content-Type')})")
    sys.stdout.buffer.write(resp.content)


@cli.command()
@click.argument("job_id", type=int)
@click.pass_obj
def cancel(api: Api, job_id):
    """Cancel a queued or running job."""
    job = a_job(api.json("DELETE", f"/jobs/{job_id}"))
    click.echo(f"job {job['id']}: {job['state']} (cancel requested)", err=True)


@cli.command()
@click.pass_obj
def workers(api: Api):
    """The workers the controller knows, and their health."""
    for w in api.json("GET", "/workers")["workers"]:
        health = "healthy" if w["healthy"] else "UNHEALTHY"
        busy = f"busy (jobs {', '.join(map(str, w['jobs']))})" if w["busy"] else "idle"
        error = f"  {w['last_error']}" if w.get("last_error") else ""
        click.echo(f"{w['url']:<32} {w['name']:<16} {health:<10} {busy}{error}")


@cli.command()
@click.option("--worker", help="Ask this worker (host name or URL).")
@click.pass_obj
def targets(api: Api, worker):
    """The targets that may be built, with their descriptions."""
    params = {"worker": worker} if worker else {}
    for t in api.json("GET", "/targets", params=params)["targets"]:
        click.echo(f"{t['name']:<24} {t['description']}".rstrip())


def main(argv: list[str] | None = None) -> None:
    """Run the CLI with its own exit statuses (click's usage errors would exit 2, like make)."""
    try:
        cli.main(args=argv, prog_name="trigger", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE)
    except Abort as exc:
        click.echo(f"trigger: {exc}", err=True)
        sys.exit(exc.code)
    except (NotTheApi, KeyError, TypeError) as exc:
        # (a field missing or of another type in an answer: the same)
        what = exc if isinstance(exc, NotTheApi) else f"{type(exc).__name__}: {exc}"
        click.echo(f"trigger: the server did not answer as a maketrigger controller does: "
                   f"{what}", err=True)
        sys.exit(EXIT_UNREACHABLE)


if __name__ == "__main__":  # python -m trigger_server.cli
    main()
