"""Edits in the workspace queue a build through the worker's file watcher."""

import time

import pytest

from .procs import wait_for

MAKEFILE = """\
## lesson: knit the sources (writes into src/ too, which must not retrigger it)
lesson:
\t@ls src; echo knitted > src/generated.txt; sleep 0.5
"""


@pytest.mark.parametrize("polling", ["0", "1"])
def test_ten_saved_files_make_one_build_and_its_output_does_not_retrigger(stack, polling):
    ws = stack.workspace(makefile=MAKEFILE)
    (stack.tmp / "ws" / "src").mkdir()
    stack.server([stack.worker(ws, TRIGGER_WATCH="src/*.txt lesson", WORKER_WATCH_DEBOUNCE=1,
                               WORKER_WATCH_POLLING=polling)])
    time.sleep(1.5)  # let the observer settle (the polling one takes a first snapshot)
    for i in range(10):
        (stack.tmp / "ws" / "src" / f"episode{i}.txt").write_text(f"episode {i}\n")
        time.sleep(0.05)
    jobs = wait_for(lambda: stack.get("/jobs")["jobs"], timeout=15, what="a watch job")
    job = stack.wait_state(jobs[0]["id"], timeout=20)
    assert (job["target"], job["source"], job["state"]) == ("lesson", "watch", "succeeded")
    assert job["requested_worker"] == "127.0.0.1"
    assert "episode9.txt" in stack.log(job["id"])
    time.sleep(4)  # debounce + a health check or two: nothing more may come
    assert len(stack.get("/jobs")["jobs"]) == 1
    (stack.tmp / "ws" / "src" / "episode1.txt").write_text("edited\n")
    wait_for(lambda: len(stack.get("/jobs")["jobs"]) == 2, timeout=15, what="a second build")


def test_a_bad_watch_line_stops_the_worker_naming_it(stack):
    w = stack.worker(start=False, TRIGGER_WATCH="src/*.txt -rf")
    with pytest.raises(RuntimeError, match="TRIGGER_WATCH line 1"):
        w.start()


def test_replicas_sharing_a_workspace_start_one_build_per_edit(stack):
    """Both workers see each edit and each asks for a build; the second request comes while the
    first one's build runs (or after it), so it must not queue a second build."""
    ws = stack.workspace(makefile=MAKEFILE.replace("sleep 0.5", "sleep 1.5"))
    (stack.tmp / "ws" / "src").mkdir()
    watch = {"TRIGGER_WATCH": "src/*.txt lesson", "WORKER_WATCH_DEBOUNCE": 0.5}
    stack.server([stack.worker(ws, name="a", **watch), stack.worker(ws, name="b", **watch)])
    time.sleep(1)
    for edit in range(3):
        (stack.tmp / "ws" / "src" / "episode.txt").write_text(f"edit {edit}\n")
        wait_for(lambda n=edit + 1: len(stack.get("/jobs")["jobs"]) == n, timeout=15,
                 what=f"the build of edit {edit}")
        jobs = stack.get("/jobs")["jobs"]
        stack.wait_state(jobs[0]["id"], timeout=20)
        time.sleep(2)  # both workers' requests have been taken (health checks every 0.5 s)
        jobs = stack.get("/jobs")["jobs"]
        assert [(j["source"], j["state"]) for j in jobs] == [("watch", "succeeded")] * (edit + 1)
