"""A trigger runs make on a real worker, and the result and log come back to the controller."""

import json
import socket
import threading
import time

import pytest
import requests

from .procs import MAKEFILE, TOKEN, remaking_makefile, wait_for


def test_it_runs_a_target_and_keeps_its_log(stack):
    w = stack.worker()
    stack.server([w])
    resp = stack.post(json={"target": "ok"})
    assert resp.status_code == 202
    assert resp.headers["Location"] == f"/jobs/{resp.json()['id']}"
    job = stack.wait_state(resp.json()["id"])
    assert job["state"] == "succeeded" and job["exit_code"] == 0
    assert job["worker"] == w.url and job["source"] == "api"
    assert job["started_at"] and job["finished_at"]
    assert "building ok" in stack.log(job["id"])


def test_a_failing_target_reports_makes_exit_code(stack):
    stack.server([stack.worker()])
    job = stack.wait_state(stack.trigger("fail")["id"])
    assert job["state"] == "failed"
    assert job["exit_code"] == 2
    assert "exit status 2" in job["error"]
    assert "about to fail" in stack.log(job["id"])


def test_wait_holds_the_response_and_its_status_tells_the_outcome(stack):
    stack.server([stack.worker(WORKER_VARS="SECS")])
    ok = stack.post(json={"target": "ok", "wait": True})
    assert ok.status_code == 200 and ok.json()["state"] == "succeeded"
    failed = stack.post(data={"target": "fail", "wait": "1"})  # a form, as from curl -d
    assert failed.status_code == 422 and failed.json()["state"] == "failed"
    pending = stack.post(json={"target": "slow", "vars": {"SECS": "1"}, "wait": 0.3})
    assert pending.status_code == 202 and pending.json()["state"] in ("queued", "running")
    # A follower took it over from the request that gave up waiting, to its end.
    job = stack.wait_state(pending.json()["id"])
    assert job["state"] == "succeeded" and "start\ndone\n" in stack.log(job["id"])


def test_variables_reach_make_when_the_worker_allows_them(stack):
    ws = stack.workspace()
    stack.server([stack.worker(ws, WORKER_VARS="MSG")])
    resp = stack.post(json={"target": "marker", "vars": {"MSG": "hello there"}, "wait": True})
    assert resp.status_code == 200, resp.text
    with open(f"{ws}/marker.txt") as f:
        assert f.read() == "hello there\n"


def test_the_log_streams_live_and_resumes_by_byte_offset(stack):
    stack.server([stack.worker()])
    job_id = stack.trigger("chatty")["id"]
    with requests.get(f"{stack.url}/jobs/{job_id}/log", params={"follow": 1}, stream=True,
                      timeout=30) as resp:
        streamed = b"".join(resp.iter_content(None)).decode()
    assert stack.job(job_id)["state"] == "succeeded"  # follow ended with the job
    assert [f"line {i}" in streamed for i in range(1, 6)] == [True] * 5
    full = stack.log(job_id)
    assert streamed == full
    offset = full.index("line 3")
    tail = requests.get(f"{stack.url}/jobs/{job_id}/log", params={"offset": offset}, timeout=30)
    assert tail.text == full[offset:]


def test_server_sent_events_resume_with_last_event_id(stack):
    stack.server([stack.worker()])
    job_id = stack.trigger("chatty")["id"]
    headers = {"Accept": "text/event-stream"}
    first_id, first_text = None, []
    with requests.get(f"{stack.url}/jobs/{job_id}/log", headers=headers, stream=True,
                      timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        for line in resp.iter_lines(decode_unicode=True):
            if line.startswith("id: "):
                first_id = int(line[4:])
            elif line.startswith("data: "):
                first_text.append(line[6:])
            elif line == "" and first_id is not None:
                break  # one event read; drop the connection
    events = []
    with requests.get(f"{stack.url}/jobs/{job_id}/log", stream=True, timeout=30,
                      headers={**headers, "Last-Event-ID": str(first_id)}) as resp:
        event = {"data": []}
        for line in resp.iter_lines(decode_unicode=True):
            if line == "":
                events.append(event)
                event = {"data": []}
            elif line.startswith("data: "):
                event["data"].append(line[6:])
            elif ":" in line and not line.startswith(":"):
                key, _, value = line.partition(": ")
                event[key] = value
    assert events[-1]["event"] == "end"
    assert json.loads(events[-1]["data"][0])["state"] == "succeeded"
    rest = "".join("\n".join(e["data"]) for e in events[:-1])
    assert "\n".join(first_text) + rest == stack.log(job_id)


def test_targets_and_workers_are_listed_with_descriptions(stack):
    w = stack.worker()
    stack.server([w])
    targets = {t["name"]: t["description"] for t in stack.get("/targets")["targets"]}
    assert targets["ok"] == "succeed quickly"
    assert targets["slow"] == "take SECS seconds"
    assert targets["chatty"] == ""
    assert ".PHONY" not in targets
    (worker_row,) = stack.get("/workers")["workers"]
    assert worker_row["url"] == w.url and worker_row["healthy"] and not worker_row["busy"]


def test_a_host_name_is_resolved_to_one_worker_per_address(stack):
    w = stack.worker()
    stack.server([w])
    # the same worker named by host name: localhost is one worker (IPv4 only), not two
    s2 = stack.server([w], db=str(stack.tmp / "second.db"),
                      TRIGGER_WORKERS=f"http://localhost:{w.port}")
    rows = requests.get(s2.url + "/workers", timeout=10).json()["workers"]
    assert [(r["url"], r["name"]) for r in rows] == [(w.url, "localhost")]
    resp = requests.post(s2.url + "/jobs", json={"target": "ok", "worker": "localhost",
                                                 "wait": True}, timeout=30)
    assert resp.status_code == 200


def test_the_worker_api_speaks_the_documented_contract(stack):
    w = stack.worker()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    started = requests.post(f"{w.url}/runs", json={"id": "c-1", "target": "ok"}, headers=auth,
                            timeout=10)
    assert started.status_code == 201
    assert set(started.json()) >= {"id", "target", "vars", "state", "exit_code", "error",
                                   "started_at", "finished_at", "log_size"}
    again = requests.post(f"{w.url}/runs", json={"id": "c-1", "target": "ok"}, headers=auth,
                          timeout=10)
    assert again.status_code == 409 and again.json()["reason"] == "exists"
    with requests.get(f"{w.url}/runs/c-1/log", params={"follow": 1}, headers=auth,
                      timeout=10) as log:
        assert "building ok" in log.text
    assert requests.get(f"{w.url}/runs/c-1", headers=auth, timeout=10).json()["state"] == \
        "succeeded"
    assert requests.get(f"{w.url}/runs/nope", headers=auth, timeout=10).status_code == 404


def test_a_workspace_without_a_makefile_is_named_as_such(stack):
    """A mistyped or unmounted WORKSPACE: make prints a database there all the same, so the
    folder looked like a makefile without targets ("not a target the worker offers")."""
    empty = stack.tmp / "empty"
    empty.mkdir()
    stack.server([stack.worker(str(empty))])
    resp = stack.post(json={"target": "site", "wait": 10})
    assert resp.status_code == 422, resp.text  # as a broken makefile's job (below)
    assert resp.json()["state"] == "failed"
    assert resp.json()["error"].endswith(
        f"there is no makefile (GNUmakefile, makefile, Makefile) in {empty}: is the right "
        "folder mounted there?")
    # GET /targets says so too, rather than only "no healthy worker listed its targets"
    listed = stack.http.get(f"{stack.url}/targets", timeout=30)
    assert listed.status_code == 503
    assert "there is no makefile" in listed.json()["error"], listed.text


def test_a_broken_makefile_fails_the_job_with_makes_message(stack):
    ws = stack.workspace()
    stack.server([stack.worker(ws)])
    with open(f"{ws}/Makefile", "a") as f:
        f.write("broken\n")
    resp = stack.post(json={"target": "ok", "wait": 10})
    assert resp.status_code == 422
    assert "missing separator" in resp.json()["error"]


def test_waiting_requests_are_bounded_and_refused_beyond_the_bound(stack):
    stack.server([stack.worker()], TRIGGER_MAX_WAITERS=1)
    holder = threading.Thread(target=stack.post, kwargs={"json": {"target": "slow",
                                                                  "wait": 3}})
    holder.start()
    wait_for(lambda: stack.get("/jobs")["jobs"], what="the waiting job to exist")
    resp = stack.post(json={"target": "ok", "wait": True})
    assert resp.status_code == 429 and resp.headers["Retry-After"]
    assert "waiting" in resp.json()["error"]
    assert len(stack.get("/jobs")["jobs"]) == 1  # the refused trigger made no job
    holder.join()


def _hang_up_after_sending(port: int, request: bytes) -> None:
    """A client that sends a request, sees it accepted, and goes (curl --max-time, a closed
    browser tab): the connection is closed before the answer is complete."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        time.sleep(0.5)  # the server has taken the request and is waiting


@pytest.mark.parametrize("how", ["wait", "follow"])
def test_a_client_that_hung_up_gives_its_wait_slot_back(stack, how):
    """A `wait` or a plain-text follow writes nothing while the job is quiet; a client that went
    away must not hold one of the TRIGGER_MAX_WAITERS slots until the job ends (here 120 s)."""
    server = stack.server([stack.worker(WORKER_VARS="SECS")], TRIGGER_MAX_WAITERS=2)
    job = stack.post(json={"target": "slow", "vars": {"SECS": "120"}}).json()
    body = json.dumps({"target": "slow", "wait": True}).encode()
    request = {
        "wait": b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
        "follow": b"GET /jobs/%d/log?follow=1 HTTP/1.1\r\nHost: x\r\n\r\n" % job["id"],
    }[how]
    for _ in range(2):
        _hang_up_after_sending(server.port, request)
    # While both slots were held, a trigger that waits was refused; once the server has seen
    # the hang-ups (within seconds), it is taken again.
    wait_for(lambda: stack.post(json={"target": "ok", "wait": 1}).status_code != 429,
             timeout=40, what="the hung-up clients' wait slots to be given back")
    assert stack.job(job["id"])["state"] == "running"  # long before the job has ended


def test_a_head_of_a_followed_or_long_log_gives_its_wait_slot_back(stack):
    """werkzeug answers a HEAD without starting the body's generator, whose `finally` gave the
    slot back: two HEADs of a follow took both slots for good, and every wait after them was
    refused with 429."""
    big = "big:\n\t@head -c 600000 /dev/zero | tr '\\0' x\n"
    worker = stack.worker(stack.workspace(makefile=MAKEFILE + big), WORKER_LOCK="target",
                          WORKER_VARS="SECS")
    server = stack.server([worker], TRIGGER_MAX_WAITERS=2)
    job = stack.post(json={"target": "slow", "vars": {"SECS": "60"}}).json()
    stack.wait_state(job["id"], "running")
    long_log = stack.post(json={"target": "big", "wait": True}).json()
    assert long_log["log_size"] > 256 * 1024  # sent in pieces, holding a slot meanwhile
    for path in [f"/jobs/{job['id']}/log?follow=1"] * 2 + [f"/jobs/{long_log['id']}/log"] * 2:
        resp = stack.http.head(f"{server.url}{path}", timeout=10)
        assert resp.status_code == 200, resp
    resp = stack.post(json={"target": "ok", "wait": 10})
    assert resp.status_code == 200, resp.text
    with stack.http.get(f"{server.url}/jobs/{long_log['id']}/log", stream=True,
                        timeout=10) as resp:
        assert resp.status_code == 200 and sum(map(len, resp.iter_content(1 << 16))) == \
            long_log["log_size"]


def test_a_hung_up_follower_is_noticed_while_another_job_logs(stack):
    """Followers wake whenever any job logs; the look at the client keeps its own clock, so a
    busy neighbour does not keep a gone client's slot."""
    loud = "loud:\n\t@for i in $$(seq 240); do echo line $$i; sleep 0.25; done\n"
    worker = stack.worker(stack.workspace(makefile=MAKEFILE + loud), WORKER_LOCK="target",
                          WORKER_VARS="SECS")
    server = stack.server([worker], TRIGGER_MAX_WAITERS=2)
    quiet = stack.post(json={"target": "slow", "vars": {"SECS": "120"}}).json()
    stack.post(json={"target": "loud"})
    wait_for(lambda: all(j["state"] == "running" for j in stack.get("/jobs")["jobs"]),
             what="both jobs to run")
    follow = b"GET /jobs/%d/log?follow=1 HTTP/1.1\r\nHost: x\r\n\r\n" % quiet["id"]
    for _ in range(2):
        _hang_up_after_sending(server.port, follow)
    wait_for(lambda: stack.post(json={"target": "ok", "wait": 1}).status_code != 429,
             timeout=40, what="the hung-up followers' wait slots to be given back")
    assert stack.job(quiet["id"])["state"] == "running"


REMAKING = remaking_makefile(3)


def test_reading_the_targets_never_remakes_included_makefiles_beside_a_build(stack):
    """GNU make remakes an included makefile that has a rule (`-include $(DEPS)`) even when
    only asked for its database (-pRrq): reading the targets while a build ran ran that recipe
    beside it, outside any job. A makefile changed meanwhile is read again once the build ends,
    and a target added to it is accepted meanwhile and built then."""
    ws = stack.workspace(makefile=REMAKING)
    w = stack.worker(ws)
    stack.server([w])
    remade = stack.tmp / "ws" / "remade.log"
    job_id = stack.trigger("slow")["id"]
    stack.wait_state(job_id, "running")
    wait_for(lambda: "start" in stack.log(job_id), what="make to start")
    before = remade.read_text()
    with open(f"{ws}/Makefile", "a") as f:  # a new target: the makefile is newer than deps.mk
        f.write("fresh:\n\t@echo fresh built\n")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    listed = requests.get(f"{w.url}/targets", headers=auth, timeout=30).json()
    assert remade.read_text() == before, "deps.mk was remade while the build ran"
    assert listed["stale"] is True and "slow" in [t["name"] for t in listed["targets"]]
    refused = requests.post(f"{w.url}/runs", headers=auth, timeout=30,
                            json={"id": "direct", "target": "fresh"})
    assert refused.status_code == 409 and refused.json()["reason"] == "busy", refused.text
    fresh = stack.post(json={"target": "fresh", "wait": 30})  # taken: the worker decides
    assert fresh.status_code == 200, fresh.text
    assert stack.job(job_id)["state"] == "succeeded"
    assert "fresh built" in stack.log(fresh.json()["id"])
    assert remade.read_text().count("remade") == before.count("remade") + 1  # after the build
    listed = requests.get(f"{w.url}/targets", headers=auth, timeout=30).json()
    assert listed["stale"] is False and "fresh" in [t["name"] for t in listed["targets"]]


def test_fields_may_come_in_the_query_string_of_a_post_without_a_json_body(stack):
    """For tools that can only be given a URL (README); the query wins over a form's field."""
    stack.server([stack.worker()])
    resp = stack.http.post(f"{stack.url}/jobs?target=ok&wait=1", timeout=30)
    assert resp.status_code == 200 and resp.json()["target"] == "ok", resp.text
    both = stack.http.post(f"{stack.url}/jobs?target=ok&wait=1", data={"target": "fail"},
                           timeout=30)
    assert both.json()["target"] == "ok", both.text
