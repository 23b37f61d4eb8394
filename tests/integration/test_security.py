"""Tokens on both sides, and every input rule enforced by the running servers."""

import json
import subprocess
import sys

import pytest
import requests

from .procs import TOKEN, wait_for

CANARY_MAKEFILE = """\
ok:
\t@echo ok
show:
\t@echo "value=$(V)"
"""


def test_the_worker_refuses_requests_without_its_token(stack):
    w = stack.worker()
    for path in ("/healthz", "/targets", "/runs/x"):
        assert requests.get(w.url + path, timeout=5).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert requests.get(w.url + path, headers=wrong, timeout=5).status_code == 401
    resp = requests.post(w.url + "/runs", json={"id": "1", "target": "ok"}, timeout=5)
    assert resp.status_code == 401 and "token" in resp.json()["error"]


@pytest.mark.parametrize("module,env", [
    ("worker", {"WORKER_WORKDIR": "/tmp"}),
    ("trigger_server", {"TRIGGER_WORKERS": "http://127.0.0.1:1"}),
])
def test_neither_side_starts_without_a_worker_token(tmp_path, module, env):
    env = {"PATH": "/usr/bin:/bin", "TRIGGER_DB": str(tmp_path / "db"), **env}
    proc = subprocess.run([sys.executable, "-c", f"from {module}.serve import main; main()"],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "no worker token" in proc.stderr and "WORKER_INSECURE=1" in proc.stderr


def test_an_api_token_guards_everything_but_healthz(stack):
    stack.server([stack.worker()], TRIGGER_API_TOKEN="s3cret")
    assert requests.get(stack.url + "/healthz", timeout=5).status_code == 200
    for method, path in (("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/jobs/1"),
                         ("GET", "/workers"), ("GET", "/targets"), ("DELETE", "/jobs/1")):
        resp = requests.request(method, stack.url + path, timeout=5)
        assert resp.status_code == 401, (method, path)
        assert "token" in resp.json()["error"]
    ok = requests.get(stack.url + "/jobs", headers={"Authorization": "Bearer s3cret"}, timeout=5)
    assert ok.status_code == 200
    # the scheme's name is case-insensitive (RFC 9110); the token is not, nor may it be cut
    for header, status in (("bearer s3cret", 200), ("BEARER  s3cret", 200),
                           ("Bearer S3CRET", 401), ("Bearer s3cre", 401), ("Bearer", 401),
                           ("Basic s3cret", 401), ("Bearer s3cret x", 401), ("s3cret", 401)):
        resp = requests.get(stack.url + "/jobs", headers={"Authorization": header}, timeout=5)
        assert resp.status_code == status, header


@pytest.fixture(scope="module")
def guarded(module_stack):
    """A worker that accepts variable V only, behind a controller: for rejection matrices."""
    ws = module_stack.workspace("guarded", makefile=CANARY_MAKEFILE)
    module_stack.server([module_stack.worker(ws, name="guarded", WORKER_VARS="V")])
    return module_stack


@pytest.mark.parametrize("target,rule", [
    ("-f/etc/passwd", "start with '-'"),
    ("--eval=x", "start with '-'"),
    ("CC=evil", "'='"),
    ("a b", "whitespace"),
    ("$(shell id)", "'$'"),
    ("`id`", "backticks"),
    ("a'b", "quotes"),
    ('a"b', "quotes"),
    ("a;b", "';'"),
    ("a|b", "'|'"),
    ("a&b", "'&'"),
    ("a\nb", "whitespace"),
    ("a\x00b", "NUL"),
    ("", "empty"),
    (".PHONY", "start with '.'"),
    ("%.o", "'%'"),
])
def test_the_controller_rejects_a_bad_target_naming_the_rule(guarded, target, rule):
    resp = guarded.post(json={"target": target})
    assert resp.status_code == 400
    assert rule in resp.json()["error"]
    assert guarded.get("/jobs")["jobs"] == []


@pytest.mark.parametrize("variables,rule", [
    ({"SHELL": "/bin/sh"}, "always refused"),
    ({"MAKEFLAGS": "-j"}, "always refused"),
    ({".SHELLFLAGS": "-c"}, "must match"),
    ({"MAKE_X": "1"}, "always refused"),
    ({"VPATH": "/"}, "always refused"),
    ({"1X": "a"}, "must match"),
    ({"V": "$(shell touch canary)"}, "'$'"),
    ({"V": "`touch canary`"}, "backticks"),
    ({"V": "a;b"}, "';'"),
    ({"V": "a>b"}, "'>'"),
    ({"V": "a\nb"}, "newlines"),
    ({"V": ". -exec touch canary +"}, "start a word with '-'"),
    ({"V": ". \\-exec touch canary +"}, "must not contain"),
    ({"PATH": "/tmp"}, "exports it to the recipes"),
    ({"V": 3}, "must be a string"),
    ("V=1", "object"),
])
def test_the_controller_rejects_bad_variables(guarded, variables, rule):
    resp = guarded.post(json={"target": "show", "vars": variables})
    assert resp.status_code == 400, resp.text
    assert rule in resp.json()["error"]
    assert guarded.get("/jobs")["jobs"] == []


def _worker_start(w, **body):
    return requests.post(f"{w.url}/runs", json={"id": "r1", **body}, timeout=10,
                         headers={"Authorization": f"Bearer {TOKEN}"})


def test_the_worker_checks_everything_itself(stack):
    ws = stack.workspace(makefile=CANARY_MAKEFILE)
    w = stack.worker(ws, WORKER_VARS="V", WORKER_TARGETS="sh*")
    cases = [
        ({"target": "-f/etc/passwd"}, "start with '-'"),
        ({"target": "nope"}, "WORKER_TARGETS"),
        ({"target": "ok"}, "WORKER_TARGETS"),
        ({"target": "shx"}, "not defined"),
        ({"target": "show", "vars": {"OTHER": "1"}}, "not listed in WORKER_VARS"),
        ({"target": "show", "vars": {"SHELL": "/bin/sh"}}, "always refused"),
        ({"target": "show", "vars": {"V": "$(shell touch canary)"}}, "'$'"),
        ({"target": "show", "vars": {"V": "x --force"}}, "start a word with '-'"),
        ({"target": "show", "vars": {"LD_PRELOAD": "/x.so"}}, "exports it to the recipes"),
        ({"target": "show", "timeout": -1}, "positive"),
    ]
    for body, rule in cases:
        resp = _worker_start(w, **body)
        assert resp.status_code == 400, body
        assert rule in resp.json()["error"], (body, resp.json())
    assert not (stack.tmp / "ws" / "canary").exists()
    assert _worker_start(w, target="show", vars={"V": "fine value"}).status_code == 201


def test_builds_do_not_get_the_worker_token(stack):
    """A recipe that prints its environment (a common debugging line) put the token in a log
    that any API client can read. The rest of the environment is the build's as before."""
    ws = stack.workspace(makefile="env:\n\t@env\n")
    stack.server([stack.worker(ws, TOOLCHAIN_SETTING="kept")])
    resp = stack.post(json={"target": "env", "wait": True})
    assert resp.status_code == 200, resp.text
    log = stack.log(resp.json()["id"])
    assert "TOOLCHAIN_SETTING=kept" in log and "PATH=" in log
    assert TOKEN not in log and "TRIGGER_WORKER_TOKEN" not in log


def test_no_variables_are_accepted_unless_the_worker_lists_them(stack):
    """Refused at the trigger, as a bad target is: the workers' lists come with their health."""
    stack.server([stack.worker(stack.workspace(makefile=CANARY_MAKEFILE))])
    resp = stack.post(json={"target": "show", "vars": {"V": "x"}, "wait": True})
    assert resp.status_code == 400
    assert "WORKER_VARS is empty" in resp.json()["error"]
    assert stack.get("/jobs")["jobs"] == []


def test_variables_are_checked_against_every_worker_the_job_may_go_to(stack):
    """Workers with different lists: a job may be handed to any worker its `worker` selects."""
    ws = stack.workspace(makefile=CANARY_MAKEFILE)
    taking = stack.worker(ws, name="v", WORKER_VARS="V")
    stack.server([stack.worker(ws, name="plain"), taking])
    resp = stack.post(json={"target": "show", "vars": {"V": "x"}})
    assert resp.status_code == 400 and "WORKER_VARS is empty" in resp.json()["error"]
    resp = stack.post(json={"target": "show", "vars": {"V": "x"}, "worker": taking.url,
                            "wait": True})
    assert resp.status_code == 200, resp.text
    resp = stack.post(json={"target": "show", "vars": {"OTHER": "x"}, "worker": taking.url})
    assert resp.status_code == 400 and "not listed in WORKER_VARS" in resp.json()["error"]


def test_values_reach_make_as_literal_text(stack):
    ws = stack.workspace(makefile=CANARY_MAKEFILE)
    stack.server([stack.worker(ws, WORKER_VARS="V")])
    resp = stack.post(json={"target": "show", "vars": {"V": "a b, c: d 50% über/x@y+z"},
                            "wait": True})
    assert resp.status_code == 200, resp.text
    assert "value=a b, c: d 50% über/x@y+z" in stack.log(resp.json()["id"])
    resp = stack.post(json={"target": "show", "vars": {"V": ". \\-exec touch canary +"}})
    assert resp.status_code == 400 and "must not contain '\\\\'" in resp.json()["error"]


@pytest.mark.parametrize("kwargs,status,message", [
    ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "JSON"),
    ({"data": b"\xff\xfe", "headers": {"Content-Type": "application/json"}}, 400, "JSON"),
    ({"json": ["ok"]}, 400, "JSON object"),
    ({"json": {"target": "ok", "bogus": 1}}, 400, "unknown field"),
    ({"data": {"target": "ok", "bogus": "1"}}, 400, "unknown field(s): bogus"),
    # `curl -d '{"target": "ok"}'` without a JSON Content-Type: told what to add
    ({"data": b'{"target": "ok"}',
      "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 400,
     "add -H 'Content-Type: application/json'"),
    ({"json": {"target": "nope"}}, 400, "not a target"),
    ({"json": {"target": "ok", "wait": "soon"}}, 400, "wait"),
    ({"json": {"target": "ok", "timeout": 0}}, 400, "timeout"),
    ({"json": {"target": "ok", "source": "webhook"}}, 400, "source"),
    ({"json": {"target": "ok", "worker": 5}}, 400, "worker"),
    ({"json": {"target": "ok", "worker": {}}}, 400, "worker must be a string"),  # not "any"
    ({"json": {"target": "ok", "source": {}}}, 400, "source must be one of"),
    ({"json": {"target": "ok", "wait": []}}, 400, "wait must be a number"),
    ({"json": {"target": "ok", "notify": "http://\u0000x/"}}, 400, "notify must be"),
    ({"json": {"target": "ok", "notify": "http://a\u007fb/"}}, 400, "notify must be"),
    ({"data": b"x", "headers": {"Content-Type": "text/plain"}}, 415, "application/json"),
    # what werkzeug drops or keeps undecoded is named as such, not "target must be a string"
    ({"data": b"target=ok&wait=\xff", "headers": {
        "Content-Type": "application/x-www-form-urlencoded"}}, 400, "the form could not be read"),
    ({"data": b"target=ok%e9", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
     400, "the form's %-escapes must encode UTF-8 text"),
    ({"data": b"--x\r\nContent-Disposition: form-data; name=target\r\n\r\nok\r\n",
      "headers": {"Content-Type": "multipart/form-data; boundary=x"}}, 400,
     "the form could not be read"),
    ({"data": b'{"target": "ok", "wait": ' + b"1" * 5000 + b"}", "headers": {
        "Content-Type": "application/json"}}, 400, "limit (4300 digits)"),
    ({"json": {"target": "ok", "vars": {"V": "x" * 70000}}}, 413, ""),
    # (from a newcomer's walkthrough: each said something less helpful before)
    ({"json": {}}, 400, "target is required"),
    ({}, 400, "target is required"),
    ({"data": {"target": "ok", "vars": "V=1"}}, 400, "a form gives each variable as a field "
                                                     "var=NAME=VALUE"),
    ({"path": "/jobs?target=sit%E9"}, 400, "the query string's %-escapes must encode UTF-8"),
])
def test_malformed_requests_get_a_json_error(guarded, kwargs, status, message):
    resp = guarded.post(**kwargs)
    assert resp.status_code == status, resp.text
    assert message in resp.json()["error"]


BIG = "1" + "0" * 400  # an integer beyond any float
NESTED = "[" * 20_000 + "]" * 20_000  # within the body limit, beyond Python's recursion limit
JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize("kwargs,message", [
    ({"raw": '{"target": "ok", "timeout": NaN}'}, "timeout must be a finite number"),
    ({"raw": '{"target": "ok", "timeout": Infinity}'}, "timeout must be a finite number"),
    ({"raw": '{"target": "ok", "timeout": ' + BIG + "}"}, "timeout is too large"),
    ({"raw": '{"target": "ok", "wait": Infinity}'}, "wait must be a finite number"),
    ({"raw": '{"target": "ok", "wait": -Infinity}'}, "wait must be a finite number"),
    ({"raw": '{"target": "ok", "wait": NaN}'}, "wait must be a finite number"),
    ({"raw": '{"target": "ok", "wait": ' + BIG + "}"}, "wait is too large"),
    ({"raw": NESTED}, "JSON object"),
    ({"json": {"target": "ok\ud800"}}, "target must not contain lone surrogates"),
    ({"json": {"target": "show", "vars": {"V": "\ud800"}}}, "value of V must not contain lone"),
    ({"json": {"target": "ok", "notify": "http://a/\ud800"}}, "notify must not contain lone"),
    ({"json": {"target": "ok", "worker": "w\ud800"}}, "worker must not contain lone"),
    ({"json": {"target": "ok", "\ud800": 1}}, "unknown field"),
    ({"form": {"target": "ok", "timeout": "1e999"}}, "timeout must be a finite number"),
    ({"form": {"target": "ok", "timeout": "nan"}}, "timeout must be a finite number"),
    ({"form": {"target": "ok", "wait": "inf"}}, "wait must be a finite number"),
    ({"form": {"target": "ok", "retries": "\u00b2"}}, "retries must be an integer"),
    ({"form": {"target": "ok", "retries": "1" * 5000}}, "retries must be an integer"),
], ids=lambda v: str(v)[:60])
def test_hostile_numbers_and_text_get_a_json_400(guarded, kwargs, message):
    """Python's json takes NaN, Infinity, huge integers, lone surrogates (\\ud800) and any
    depth; str.isdigit() takes '²'. None of it may reach the database, make or a 500."""
    if "raw" in kwargs:
        kwargs = {"data": kwargs["raw"].encode(), "headers": JSON}
    elif "json" in kwargs:  # requests' own encoding refuses lone surrogates: json.dumps does not
        kwargs = {"data": json.dumps(kwargs["json"]).encode(), "headers": JSON}
    else:
        kwargs = {"data": kwargs["form"]}
    before = guarded.get("/jobs")["jobs"]
    resp = guarded.post(**kwargs)
    assert resp.status_code == 400, resp.text
    assert message in resp.json()["error"]
    assert guarded.get("/jobs")["jobs"] == before


@pytest.mark.parametrize("path,status", [
    ("/jobs?limit=%C2%B2", 400),
    ("/jobs?before=%C2%B2", 400),
    ("/jobs?limit=%D9%A3", 400),  # ARABIC-INDIC DIGIT THREE: int() reads it, but it is no ASCII
    ("/jobs?before=" + "9" * 30, 400),
], ids=lambda v: v[:40] if isinstance(v, str) else str(v))
def test_hostile_numbers_in_urls_get_a_json_4xx(guarded, path, status):
    resp = requests.get(guarded.url + path, timeout=10)
    assert resp.status_code == status, resp.text
    assert "error" in resp.json()


def test_a_non_finite_timeout_is_refused_while_no_worker_limit_is_known(stack):
    """Without a healthy worker the controller knows no WORKER_JOB_TIMEOUT to compare with;
    an infinite timeout was then stored, and every list of jobs became invalid JSON."""
    w = stack.worker()
    stack.server([w])
    w.kill()
    wait_for(lambda: not any(x["healthy"] for x in stack.get("/workers")["workers"]),
             what="the worker to be unhealthy")
    for kwargs in ({"data": {"target": "fail", "timeout": "1e999"}},
                   {"data": b'{"target": "fail", "timeout": Infinity}', "headers": JSON},
                   {"data": b'{"target": "fail", "timeout": ' + BIG.encode() + b"}",
                    "headers": JSON}):
        resp = stack.post(**kwargs)
        assert resp.status_code == 400, resp.text
        assert "timeout" in resp.json()["error"]
    assert stack.get("/jobs")["jobs"] == []


def test_unknown_routes_and_methods_answer_json(guarded):
    stack = guarded
    nope = requests.get(stack.url + "/nope", timeout=5)
    assert nope.status_code == 404 and "error" in nope.json()
    wrong = requests.put(stack.url + "/jobs", timeout=5)
    assert wrong.status_code == 405 and "error" in wrong.json()
    missing = requests.get(stack.url + "/jobs/999", timeout=5)
    assert missing.status_code == 404 and missing.json()["error"] == "no job 999"
    for path in ("/jobs/abc", "/jobs/-1", "/jobs/-1/log"):  # not Flask's "URL not found" words
        resp = requests.get(stack.url + path, timeout=5)
        assert resp.status_code == 404 and resp.json()["error"] == (
            f"no job {path.split('/')[2]!r}: job ids are positive integers"), resp.text
    big_negative = requests.post(stack.url + "/jobs", json={"target": "ok", "timeout": -10**400},
                                 timeout=5)
    assert big_negative.status_code == 400
    assert big_negative.json()["error"] == "timeout must be > 0"
    for bad in ("/jobs?limit=0", "/jobs?limit=x", "/jobs?state=bogus", "/jobs/1/log?offset=-1"):
        resp = requests.get(stack.url + bad, timeout=5)
        assert resp.status_code in (400, 404) and "error" in resp.json(), bad


def test_no_token_reaches_a_log_or_a_job_record(stack):
    w = stack.worker()
    server = stack.server([w], TRIGGER_API_TOKEN="api-s3cret-token")
    ok = stack.post(json={"target": "ok", "wait": True})
    refused = requests.get(stack.url + "/jobs", headers={"Authorization": "Bearer wrong-one"},
                           timeout=5)
    assert ok.status_code == 200 and refused.status_code == 401
    records = "".join(p.read_text() for p in (stack.tmp / "worker0-state" / "runs").iterdir())
    for text in (w.settled_output(), server.settled_output(), records, ok.text,
                 stack.log(ok.json()["id"])):
        for secret in (TOKEN, "api-s3cret-token", "wrong-one"):
            assert secret not in text


@pytest.mark.parametrize("headers", [
    {"SCRIPT_NAME": "/elsewhere"},  # a prefix the path does not have
    {"SCRIPT_NAME": "/jobs"},
    {"X-Forwarded-Proto": "https", "X-Forwarded-Ssl": "off"},  # contradictory schemes
    {"X-Forwarded-Protocol": "ssl", "X-Forwarded-Proto": "http"},
])
def test_no_peer_can_move_a_request_with_forwarding_headers(guarded, headers):
    """gunicorn takes SCRIPT_NAME and the scheme from the headers of peers it trusts (127.0.0.1
    by default): a SCRIPT_NAME the path does not start with was a 500 with gunicorn's HTML,
    contradictory schemes a 400, and a request was routed by what its path has after the
    SCRIPT_NAME. Both servers take none of them, from anyone."""
    worker = next(p for p in guarded.procs if p.module == "worker")
    for url, auth in ((guarded.url + "/jobs", None), (worker.url + "/targets", TOKEN)):
        sent = {**headers, **({"Authorization": f"Bearer {auth}"} if auth else {})}
        resp = requests.get(url, headers=sent, timeout=10)
        assert resp.status_code == 200, (url, resp.status_code, resp.text[:200])
        assert isinstance(resp.json(), dict)
    resp = requests.get(guarded.url + "/elsewhere/jobs", headers={"SCRIPT_NAME": "/elsewhere"},
                        timeout=10)
    assert resp.status_code == 404 and "error" in resp.json()  # it was /jobs, with a 200
