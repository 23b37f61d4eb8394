"""The controller's side of the worker API against a real worker: a start that answers with the
run followed to its end (run frames), resuming a follow from an offset, and kept-alive
connections that survive a worker that closed them."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from trigger_server import worker_http

from .procs import TOKEN, Proc, wait_for


def follow(answer: worker_http.Stream) -> tuple[bytes, dict | None]:
    log, end = b"", None
    for item in worker_http.frames(answer):
        if isinstance(item, dict):
            end = item
        else:
            log += item
    answer.release()
    return log, end


def start(conns: worker_http.Connections, worker: Proc, run_id: str, target: str):
    answer = conns.request(worker.url, "POST", "/runs", stream=True, timeout=(2, 30),
                           body={"id": run_id, "target": target, "follow": True})
    assert answer.status_code == 201
    assert answer.content_type.startswith(worker_http.FRAMES_TYPE)
    return answer


def plain_log(worker: Proc, run_id: str) -> bytes:
    return requests.get(f"{worker.url}/runs/{run_id}/log", timeout=10,
                        headers={"Authorization": f"Bearer {TOKEN}"}).content


def test_a_start_answers_with_the_whole_run_and_its_end(stack):
    w = stack.worker()
    conns = worker_http.Connections(TOKEN)
    log, end = follow(start(conns, w, "t-ok", "ok"))
    assert b"building ok" in log
    assert log == plain_log(w, "t-ok")
    assert end["state"] == "succeeded" and end["exit_code"] == 0
    assert end["log_size"] == len(log)
    assert "pid" not in end and "owner_pid" not in end

    log, end = follow(start(conns, w, "t-fail", "fail"))
    assert end["state"] == "failed" and end["exit_code"] == 2
    assert b"about to fail" in log and log == plain_log(w, "t-fail")


def test_the_last_log_bytes_and_the_end_come_in_one_piece(stack):
    """One write, one wake-up of the controller, for what make printed last and its end. The
    worker's stream may wake on its poll between make's last line and its exit, and then
    sends the line alone (a few ms in 50): so three builds, of which one is enough. Before,
    the line never came with the end."""
    w = stack.worker(WORKER_VARS="SECS")
    conns = worker_http.Connections(TOKEN)
    together = []
    for i in range(3):
        answer = conns.request(w.url, "POST", "/runs", stream=True, timeout=(2, 30),
                               body={"id": f"t-last-{i}", "target": "slow",
                                     "vars": {"SECS": "0.3"}, "follow": True})
        assert answer.status_code == 201
        reads = list(iter(answer.read1, b""))  # one HTTP chunk per read: one write each
        answer.release()
        last = [r for r in reads if b"done\n" in r]
        assert len(last) == 1, reads
        together.append(b"\nend {" in last[0])
    assert any(together)


def test_a_follow_resumes_from_an_offset_and_ends_with_the_state(stack):
    w = stack.worker()
    conns = worker_http.Connections(TOKEN)
    answer = start(conns, w, "t-chatty", "chatty")
    first = b""
    for item in worker_http.frames(answer):
        first += item
        if b"line 2" in first:
            break
    answer.close()  # the controller lost the stream mid-run
    answer.release()
    rest = conns.request(w.url, "GET", "/runs/t-chatty/log", stream=True,
                         params={"offset": len(first), "follow": 1, "frames": 1})
    log, end = follow(rest)
    assert first + log == plain_log(w, "t-chatty")
    assert b"line 5" in log and end["state"] == "succeeded"


def test_refusals_come_back_as_json_before_any_frame(stack):
    w = stack.worker()
    conns = worker_http.Connections(TOKEN)
    follow(start(conns, w, "t-1", "ok"))
    again = conns.request(w.url, "POST", "/runs", stream=True,
                          body={"id": "t-1", "target": "ok", "follow": True})
    assert again.status_code == 409 and b'"exists"' in again.body()
    bad = conns.request(w.url, "POST", "/runs", body={"id": "t-2", "target": "nope",
                                                      "follow": True})
    assert bad.status_code == 400 and "not defined" in bad.json()["error"]
    wrong = worker_http.Connections("not-the-token").request(w.url, "GET", "/healthz")
    assert wrong.status_code == 401


def test_a_kept_alive_connection_is_reused_and_replaced_once_the_worker_closed_it(stack):
    w = stack.worker()
    conns = worker_http.Connections(TOKEN)
    assert conns.request(w.url, "GET", "/healthz").json()["ok"]
    key = conns._key(w.url)
    (kept,) = conns._idle[key]
    assert conns.request(w.url, "GET", "/healthz").status_code == 200
    assert conns._idle[key] == [kept]  # the same connection again
    w.stop()
    restarted = Proc("worker", w.env, w.log_path, port=w.port).start()
    stack.procs.append(restarted)
    assert conns.request(w.url, "GET", "/healthz").json()["ok"]  # not a broken pipe
    assert conns._idle[key] != [kept]


def test_no_listener_is_told_apart_from_a_broken_answer(stack):
    w = stack.worker()
    w.stop()
    with pytest.raises(worker_http.ConnectFailed) as failed:
        worker_http.Connections(TOKEN).request(w.url, "GET", "/healthz")
    assert failed.value.refused


def test_closing_a_stream_wakes_its_blocked_reader(stack):
    w = stack.worker()
    conns = worker_http.Connections(TOKEN)
    answer = conns.request(w.url, "POST", "/runs", stream=True, timeout=(2, 60),
                           body={"id": "t-slow", "target": "slow", "follow": True})
    outcome = []

    def read():
        try:
            follow(answer)
            outcome.append("ended")
        except worker_http.Broken:
            outcome.append("broken")

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.5)
    closed_at = time.monotonic()
    answer.close()
    reader.join(10)
    assert outcome == ["broken"] and time.monotonic() - closed_at < 5


def test_a_plain_log_from_a_worker_without_frames_is_still_followed(stack):
    from trigger_server.workers import Followed, Worker

    w = stack.worker()
    conns = worker_http.Connections(TOKEN)
    follow(start(conns, w, "t-plain", "ok"))
    answer = conns.request(w.url, "GET", "/runs/t-plain/log", stream=True,
                           params={"follow": 1})  # what a worker older than frames answers
    followed = Followed(Worker(url=w.url, name="w", configured=w.url), answer)
    items = list(followed)
    followed.close()
    assert all(isinstance(i, bytes) for i in items)  # no end state: the controller asks for it
    assert b"".join(items) == plain_log(w, "t-plain")


def test_a_follow_of_a_run_a_sibling_worker_runs_ends_with_it(stack):
    """Two workers on one workspace and one state folder (the default folder of two workers
    on a workspace): following B's run on A ticked for ever, as A read the run's record once
    and waited for an end only B's process could signal."""
    ws = stack.workspace("shared", "slow:\n\t@echo start; sleep 1; echo done\n")
    state = str(stack.tmp / "shared-state")
    a = stack.worker(ws, name="a", WORKER_LOCK="target", WORKER_STATE_DIR=state)
    b = stack.worker(ws, name="b", WORKER_LOCK="target", WORKER_STATE_DIR=state)
    conns = worker_http.Connections(TOKEN)
    on_b = conns.request(b.url, "POST", "/runs", stream=True, timeout=(2, 30),
                         body={"id": "long", "target": "slow", "follow": True})
    assert on_b.status_code == 201
    on_a = conns.request(a.url, "GET", "/runs/long/log", stream=True, timeout=(2, 10),
                         params={"follow": "1", "frames": "1"})
    assert on_a.status_code == 200
    plain = requests.get(f"{a.url}/runs/long/log", params={"follow": "1"}, timeout=10,
                         headers={"Authorization": f"Bearer {TOKEN}"})
    log, end = follow(on_a)
    assert end["state"] == "succeeded" and b"done" in log
    assert b"done\nmake: Leaving directory" in plain.content  # (it ended: read to its end)
    assert follow(on_b)[1]["state"] == "succeeded"


def test_a_start_given_up_during_a_slow_check_never_starts_and_is_not_unknown_meanwhile(stack):
    """The controller gives up on a start after 30 s, then asks whether the run exists. A
    worker still at its checks (a makefile slow to read) answered "unknown", and started make
    later all the same: the job ran on another worker too. Now the question waits for the
    start under way, and a start whose sender hung up does not start."""
    ws = stack.workspace("slowread", "X := $(shell sleep 2)\nmark:\n\t@touch marked\n")
    w = stack.worker(ws)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    # the first read of the makefile (at the first start) takes 2 s; this sender waits 0.5 s
    with pytest.raises(requests.Timeout):
        requests.post(f"{w.url}/runs", json={"id": "r1", "target": "mark"}, headers=auth,
                      timeout=(2, 0.5))
    asked = requests.get(f"{w.url}/runs/r1", headers=auth, timeout=10)
    assert asked.status_code == 404, asked.text  # after the start under way gave up
    time.sleep(0.5)
    assert not (stack.tmp / "slowread" / "marked").exists()
    again = requests.post(f"{w.url}/runs", json={"id": "r1", "target": "mark"}, headers=auth,
                          timeout=30)
    assert again.status_code == 201, again.text
    wait_for(lambda: (stack.tmp / "slowread" / "marked").exists(), what="the wanted start")
