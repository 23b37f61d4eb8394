"""Secure with no setup: only the controller is published, on localhost, and workers answer
nobody without the token that the controller generated at its first start."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.docker

GET_WORKER_HEALTHZ = """
import os, sys, urllib.error, urllib.request
request = urllib.request.Request("http://worker:8000/healthz")
if len(sys.argv) > 1:
    token = open("/run/maketrigger/worker_token").read().strip()
    request.add_header("Authorization", "Bearer " + token)
try:
    print(urllib.request.urlopen(request, timeout=5).status)
except urllib.error.HTTPError as exc:
    print(exc.code)
"""


def test_the_worker_publishes_no_port_on_the_host(fresh):
    worker = fresh.container("worker")

    published = worker.attrs["HostConfig"]["PortBindings"] or {}

    assert published == {}
    assert all(not bindings for bindings in worker.ports.values())


def test_the_controller_is_published_on_localhost_only(fresh):
    bindings = fresh.container("controller").ports["8080/tcp"]

    assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]


def test_the_worker_refuses_a_request_without_the_token(fresh):
    code, output = fresh.exec_python("controller", GET_WORKER_HEALTHZ)

    assert code == 0, output
    assert output.strip() == "401"


def test_the_worker_answers_with_the_generated_token(fresh):
    code, output = fresh.exec_python("controller", GET_WORKER_HEALTHZ.replace(
        "len(sys.argv) > 1", "True"))

    assert code == 0, output
    assert output.strip() == "200"


def test_the_generated_token_belongs_to_the_controller_and_is_readable_by_workers(fresh):
    controller = fresh.container("controller")

    result = controller.exec_run(["stat", "-c", "%u %a", "/run/maketrigger/worker_token"])

    assert result.output.decode().split() == ["10001", "644"]
    user = controller.exec_run(["id", "-u"]).output.decode().strip()
    assert user == "10001"
