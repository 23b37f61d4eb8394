"""The running controller, fuzzed from its own OpenAPI description with schemathesis: no 5xx,
no status or body that breaks the description. Bounded: a fixed seed and example count."""

import shutil
import subprocess
import sys

import pytest

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance")


def test_fuzzing_from_the_openapi_description_finds_no_server_errors(stack):
    exe = shutil.which("schemathesis")
    if exe is None:
        pytest.fail("schemathesis is not installed (pip install -e '.[test]')")
    stack.server([stack.worker(WORKER_VARS="SECS")], TRIGGER_MAX_WAIT=1,
                 TRIGGER_GITHUB_SECRET="fuzz", TRIGGER_GITHUB_TARGET="ok",
                 TRIGGER_GITLAB_TOKEN="fuzz", TRIGGER_GITLAB_TARGET="ok")
    out = subprocess.run(
        [exe, "run", f"{stack.url}/openapi.json", "--checks", CHECKS, "--max-examples", "30",
         "--seed", "20261127", "--request-timeout", "15", "--phases",
         "examples,coverage,fuzzing", "--warnings", "off"],
        capture_output=True, text=True, timeout=600)
    sys.stdout.write(out.stdout[-3000:])
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
