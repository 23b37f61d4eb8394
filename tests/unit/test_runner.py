"""The worker's runner on its own: locks, records, pruning, readable ends."""

import errno
import json
import os
import signal
import time
import types
from pathlib import Path

import pytest

from tests.integration.procs import wait_for
from worker import runner as runner_module
from worker.runner import Busy, RunExists, Runner, RunState, describe_exit


@pytest.fixture
def workspace(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "Makefile").write_text("ok:\n\t@echo ok\nslow:\n\t@sleep 5\nother:\n\t@sleep 5\n")
    return ws


def wait_done(run):
    assert run.done.wait(10)
    return run


def wait_recorded(runner):
    """Until the runner's ends are written (after `done`, which answers followers first)."""
    deadline = time.monotonic() + 10
    while runner.active() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not runner.active()


def test_a_second_build_in_the_workspace_is_refused_while_one_runs(workspace, tmp_path):
    a = Runner(str(workspace), str(tmp_path / "a"), kill_grace=1)
    b = Runner(str(workspace), str(tmp_path / "b"), kill_grace=1)  # a replica, same folder
    run = a.start("1", "slow", {}, None)
    with pytest.raises(Busy):
        b.start("2", "other", {}, None)
    a.cancel("1")
    wait_done(run)
    wait_done(b.start("3", "ok", {}, None))


def test_with_target_locks_only_the_same_target_waits(workspace, tmp_path):
    a = Runner(str(workspace), str(tmp_path / "a"), lock_mode="target", kill_grace=1)
    b = Runner(str(workspace), str(tmp_path / "b"), lock_mode="target", kill_grace=1)
    slow = a.start("1", "slow", {}, None)
    other = b.start("2", "other", {}, None)
    with pytest.raises(Busy, match="already being built"):
        b.start("3", "slow", {}, None)
    assert (workspace / ".maketrigger" / ".gitignore").read_text().endswith("*\n")
    for runner, run in ((a, slow), (b, other)):
        runner.cancel(run.id)
        wait_done(run)


def test_a_run_id_runs_at_most_once(workspace, tmp_path):
    r = Runner(str(workspace), str(tmp_path / "s"))
    wait_done(r.start("1", "ok", {}, None))
    with pytest.raises(RunExists):
        r.start("1", "ok", {}, None)


def test_a_run_id_started_by_a_worker_sharing_the_folder_is_refused(
        workspace, tmp_path, monkeypatch):
    a = Runner(str(workspace), str(tmp_path / "s"))
    wait_done(a.start("1", "ok", {}, None))
    wait_recorded(a)
    b = Runner(str(workspace), str(tmp_path / "s"))
    monkeypatch.setattr("worker.runner.os.path.exists", lambda path: False)  # lost the race
    with pytest.raises(RunExists):
        b.start("1", "slow", {}, None)  # refused before anything of it was made
    assert b.get("1").state is RunState.SUCCEEDED and b.active() == []
    assert "\nok\n" in (tmp_path / "s" / "runs" / "1.log").read_text()  # its log too
    wait_done(b.start("2", "ok", {}, None))  # the workspace lock went with the killed make


def test_a_make_that_cannot_start_leaves_nothing_and_its_id_free(workspace, tmp_path,
                                                                 monkeypatch):
    r = Runner(str(workspace), str(tmp_path / "s"))

    def no_make(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "make")

    with monkeypatch.context() as m:
        m.setattr("worker.runner.subprocess.Popen", no_make)
        with pytest.raises(FileNotFoundError):
            r.start("1", "ok", {}, None)
    assert list((tmp_path / "s" / "runs").iterdir()) == [] and r.active() == []
    wait_done(r.start("1", "ok", {}, None))  # the id, and the workspace lock, are free
    assert "\nok\n" in (tmp_path / "s" / "runs" / "1.log").read_text()


def test_a_record_keeps_the_last_whole_line_a_crash_left(workspace, tmp_path):
    r = Runner(str(workspace), str(tmp_path / "s"))
    wait_done(r.start("1", "ok", {}, None))
    wait_recorded(r)
    record = tmp_path / "s" / "runs" / "1.json"
    lines = record.read_text().splitlines()
    assert [line.count('"state"') for line in lines if line] == [1, 1]  # started, ended
    with record.open("a") as f:
        f.write('{"id": "1", "state": "fail')  # a write cut short
    assert Runner(str(workspace), str(tmp_path / "s")).get("1").state is RunState.SUCCEEDED
    record.write_text(lines[0])  # one record without a newline, as older workers wrote them
    assert Runner(str(workspace), str(tmp_path / "s")).get("1").state is RunState.RUNNING


def test_a_record_added_after_a_cut_short_line_or_an_old_record_is_read(workspace, tmp_path):
    r = Runner(str(workspace), str(tmp_path / "s"))
    wait_done(r.start("1", "ok", {}, None))
    wait_recorded(r)
    record = tmp_path / "s" / "runs" / "1.json"
    started = record.read_text().splitlines()[0]
    for before in (started + '\n{"id": "1", "sta', started):  # cut short; as older workers wrote
        record.write_text(before)
        run = Runner(str(workspace), str(tmp_path / "s")).get("1")
        run.state = RunState.LOST  # as recover() records a run its dead predecessor left
        r._save(run)
        assert Runner(str(workspace), str(tmp_path / "s")).get("1").state is RunState.LOST


def test_records_outlive_the_runner_and_old_ones_are_pruned(workspace, tmp_path):
    r = Runner(str(workspace), str(tmp_path / "s"), keep_runs=3)
    for i in range(5):
        wait_done(r.start(str(i), "ok", {}, None))
        wait_recorded(r)
        time.sleep(0.01)
    again = Runner(str(workspace), str(tmp_path / "s"), keep_runs=3)
    assert again.get("4").state is RunState.SUCCEEDED
    kept = sorted(p.name for p in (tmp_path / "s" / "runs").glob("*.json"))
    assert len(kept) <= 4 and "4.json" in kept and "0.json" not in kept


def test_kept_logs_are_bounded_in_bytes_too(tmp_path):
    """WORKER_KEEP_RUNS alone kept 100 logs of any size: 100 chatty builds, gigabytes."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "Makefile").write_text("big:\n\t@head -c 1000 /dev/zero | tr '\\0' x\n")
    r = Runner(str(ws), str(tmp_path / "s"), keep_runs=10, keep_log_bytes=3000)
    runs = tmp_path / "s" / "runs"
    for i in range(8):
        time.sleep(0.01)
        wait_done(r.start(str(i), "big", {}, None))
        wait_recorded(r)
    def size(p):  # the last end's pruning may remove it meanwhile
        try:
            return p.stat().st_size
        except FileNotFoundError:
            return 0

    deadline = time.monotonic() + 10
    while sum(size(p) for p in runs.glob("*.log")) > 3000:
        assert time.monotonic() < deadline, sorted(p.name for p in runs.iterdir())
        time.sleep(0.01)
    kept = {p.name for p in runs.iterdir()}
    assert {"7.json", "7.log", "6.json", "6.log"} <= kept and "0.log" not in kept


def test_the_run_files_are_weighed_only_when_there_may_be_too_many(workspace, tmp_path,
                                                                     monkeypatch):
    """Every tenth of WORKER_KEEP_RUNS ends, the pruning stat()ed every record and log kept
    (0.5 ms for 110 runs, on the way to the next build), to find nothing to remove."""
    weighed = []
    real_stat = runner_module._stat
    monkeypatch.setattr(runner_module, "_stat",
                        lambda entry: weighed.append(entry.name) or real_stat(entry))
    r = Runner(str(workspace), str(tmp_path / "s"), keep_runs=10)  # looks at every end
    wait_done(r.start("0", "ok", {}, None))
    wait_recorded(r)
    wait_for(lambda: weighed, what="the first look weighs what is there")
    assert set(weighed) <= {"0.json", "0.log"}
    weighed.clear()
    for i in range(1, 11):
        wait_done(r.start(str(i), "ok", {}, None))
        wait_recorded(r)
    assert weighed == []  # 11 runs: not a tenth over 10
    time.sleep(0.01)
    wait_done(r.start("11", "ok", {}, None))
    wait_recorded(r)
    wait_for(lambda: len(list((tmp_path / "s" / "runs").iterdir())) <= 20, what="the pruning")
    assert "0.json" in weighed and "0.log" in weighed
    assert not (tmp_path / "s" / "runs" / "0.json").exists()


def test_logs_over_the_cap_when_the_worker_starts_go_at_its_first_end(workspace, tmp_path):
    """A cap lowered (or a predecessor's logs) waited until this worker had logged a tenth of
    the cap itself: up to WORKER_KEEP_RUNS ends for quiet builds."""
    runs = tmp_path / "s" / "runs"
    runs.mkdir(parents=True)
    for i in range(3):
        (runs / f"old{i}.log").write_bytes(b"x" * 100_000)
        (runs / f"old{i}.json").write_text("{}\n")
        os.utime(runs / f"old{i}.json", (1_000_000 + i, 1_000_000 + i))
    r = Runner(str(workspace), str(tmp_path / "s"), keep_runs=10, keep_log_bytes=150_000)
    wait_done(r.start("new", "ok", {}, None))
    wait_recorded(r)
    wait_for(lambda: not (runs / "old1.log").exists(), what="the old logs over the cap to go")
    assert (runs / "old2.log").exists() and (runs / "new.log").exists()
    assert not (runs / "old0.log").exists() and not (runs / "old0.json").exists()


def test_a_log_left_without_its_record_is_pruned_in_its_turn(workspace, tmp_path):
    runs = tmp_path / "s" / "runs"
    runs.mkdir(parents=True)
    (runs / "orphan.log").write_bytes(b"+ make -C w -- ok\n")  # its worker died before the record
    r = Runner(str(workspace), str(tmp_path / "s"), keep_runs=3)
    for i in range(6):
        time.sleep(0.01)
        wait_done(r.start(str(i), "ok", {}, None))
        wait_recorded(r)
    # Each end prunes in the thread that followed the build, after its record: on a loaded
    # machine the last of them may still be at it.
    # It removes the oldest first (the orphan), then the rest: wait for all of it.
    deadline = time.monotonic() + 10
    while "orphan.log" in (left := {p.name for p in runs.iterdir()}) or len(left) > 8:
        assert time.monotonic() < deadline, f"the orphan log was never pruned: {sorted(left)}"
        time.sleep(0.01)
    assert {"5.json", "5.log"} <= left


@pytest.fixture
def full_disk(monkeypatch):
    """While `.on`, the runner's state folder is full: every record and log write it makes
    fails with ENOSPC (reads work)."""
    disk = types.SimpleNamespace(on=False)
    write_all, real_open = runner_module._write_all, open

    def enospc():
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_write_all(fd, data):
        if disk.on:
            raise enospc()
        write_all(fd, data)

    def full_open(path, mode="r", *args, **kwargs):
        if disk.on and set(mode) & set("wax+"):
            raise enospc()
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(runner_module, "_write_all", full_write_all)
    monkeypatch.setattr(runner_module, "open", full_open, raising=False)
    return disk


def saved_state(tmp_path, run_id):
    """The run's state as its record on disk says (as a restarted worker would read it)."""
    lines = (tmp_path / "s" / "runs" / f"{run_id}.json").read_text().split("\n")
    return json.loads([line for line in lines if line.strip()][-1])["state"]


def eventually(check, what):
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


@pytest.fixture
def sleepy(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "Makefile").write_text("quick:\n\t@sleep 0.3\nbroken:\n\t@sleep 0.3; exit 2\n"
                                 "ok:\n\t@echo ok\n")
    return ws


@pytest.mark.parametrize("target,state", [("quick", RunState.SUCCEEDED),
                                          ("broken", RunState.FAILED)])
def test_a_run_whose_end_cannot_be_written_ends_all_the_same(sleepy, tmp_path, full_disk,
                                                            target, state):
    r = Runner(str(sleepy), str(tmp_path / "s"), kill_grace=1)
    run = r.start("1", target, {}, None)
    full_disk.on = True  # the state folder fills up while make runs
    wait_done(run)
    wait_recorded(r)  # the worker is not busy with it for ever
    assert r.get("1").state is state  # its real end, not the `running` its record still says
    assert saved_state(tmp_path, "1") == "running"
    full_disk.on = False
    wait_done(r.start("2", "ok", {}, None))  # the workspace lock went with make
    eventually(lambda: saved_state(tmp_path, "1") == state.value,  # written at the next end
               "the record that could not be written was not written later")
    assert Runner(str(sleepy), str(tmp_path / "s")).get("1").state is state


def test_a_run_that_ended_unrecorded_is_not_signalled_at_shutdown(sleepy, tmp_path, full_disk,
                                                                  monkeypatch):
    r = Runner(str(sleepy), str(tmp_path / "s"), kill_grace=1)
    run = r.start("1", "broken", {}, None)
    full_disk.on = True
    wait_done(run)
    wait_recorded(r)  # or tried to: the disk was full
    assert saved_state(tmp_path, "1") == "running"
    full_disk.on = False
    signalled = []
    monkeypatch.setattr(runner_module, "kill_group", lambda pgid, sig: signalled.append(pgid))
    r.shutdown(linger=0)
    assert run.pid not in signalled  # its group id may be another process's by now
    assert saved_state(tmp_path, "1") == "failed"  # shutdown's last try wrote it


def test_a_worker_starting_on_a_full_disk_reports_what_it_found_lost(sleepy, tmp_path,
                                                                     full_disk):
    runs = tmp_path / "s" / "runs"
    runs.mkdir(parents=True)
    (runs / "1.log").write_text("+ make\n")
    (runs / "1.json").write_text(json.dumps({"id": "1", "target": "quick", "vars": {},
                                             "state": "running", "host": "elsewhere"}) + "\n")
    full_disk.on = True
    r = Runner(str(sleepy), str(tmp_path / "s"))
    r.recover()  # does not fail the worker's start
    assert r.get("1").state is RunState.LOST and r.active() == []


@pytest.mark.parametrize("code,text", [(0, "exit status 0"), (2, "exit status 2"),
                                       (-signal.SIGKILL, "killed by SIGKILL"),
                                       (-signal.SIGTERM, "killed by SIGTERM")])
def test_ends_are_described_readably(code, text):
    assert describe_exit(code) == text


def test_a_make_killed_by_a_signal_says_so_in_plain_words(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "Makefile").write_text("die:\n\t@kill -KILL $$PPID; sleep 5\n")  # make is the parent
    runner = Runner(str(ws), str(tmp_path / "state"), kill_grace=1)
    run = wait_done(runner.start("1", "die", {}, None))
    assert run.state is RunState.FAILED and run.error == "make was killed by SIGKILL"


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "polling"])
def test_exited_tells_an_end_from_a_timeout_and_leaves_the_exit_code(monkeypatch, pidfd):
    import subprocess

    from worker import runner

    if not pidfd:
        def no_pidfd(pid):
            raise OSError("pidfd_open blocked")

        monkeypatch.setattr(runner.os, "pidfd_open", no_pidfd, raising=False)
    quick = subprocess.Popen(["sh", "-c", "exit 7"])
    assert runner.exited(quick, 30)
    assert quick.wait() == 7  # not reaped by exited()
    slow = subprocess.Popen(["sleep", "30"])
    try:
        assert not runner.exited(slow, 0.2)
        assert slow.poll() is None
    finally:
        slow.kill()
        slow.wait()


def test_recipes_see_make_as_make_though_it_is_found_once(tmp_path):
    """make is exec'd by its absolute path (rules.make_program), but its argv[0] stays `make`:
    that is what $(MAKE) says, in every recursive make line a build log shows."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "Makefile").write_text("show:\n\t@echo 'MAKE=$(MAKE)'\n")
    runner = Runner(str(ws), str(tmp_path / "state"))
    assert os.path.isabs(runner._make)
    run = wait_done(runner.start("1", "show", {}, None))
    with open(runner.log_path(run.id)) as f:
        assert "MAKE=make\n" in f.read()


def test_a_stopped_build_reads_terminated_not_makes_lost_wait(tmp_path):
    """SIGTERM to make's whole group at once often made GNU make 4.3 lose the race to reap its
    recipe's shell: "make: *** wait: No child processes.  Stop." and exit status 2 in the log
    of a job that was cancelled or timed out. make now gets it first."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "Makefile").write_text("slow:\n\t@echo start; sleep 30; echo done\n")
    runner = Runner(str(ws), str(tmp_path / "state"), kill_grace=5)
    for i in range(5):
        run = runner.start(str(i), "slow", {}, None)
        log_path = runner.log_path(run.id)
        deadline = time.monotonic() + 10
        while b"start" not in Path(log_path).read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        runner.cancel(run.id)
        wait_done(run)
        with open(runner.log_path(run.id)) as f:
            text = f.read()
        assert "No child processes" not in text, text
        assert "[Makefile:2: slow] Terminated" in text, text
        assert (run.state, run.exit_code) == (RunState.CANCELLED, None)


def test_a_stopped_build_gives_its_whole_tree_sigterm_first(tmp_path):
    """make passes SIGTERM to its own children only: the rest of the group gets it too (after
    make's), so a sub-make under the recipe's shell deletes the target it was writing rather
    than being killed (SIGKILL) with a half-written file that looks up to date next time."""
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    (ws / "Makefile").write_text("top:\n\t@cd sub && $(MAKE) -s x.out\n")
    (ws / "sub" / "Makefile").write_text("x.out:\n\t@echo partial > $@; echo writing; sleep 30\n")
    runner = Runner(str(ws), str(tmp_path / "state"), kill_grace=5)
    run = runner.start("1", "top", {}, None)
    log_path = Path(runner.log_path(run.id))
    deadline = time.monotonic() + 10
    while b"writing" not in log_path.read_bytes():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    runner.cancel(run.id)
    wait_done(run)
    text = log_path.read_text()
    assert "Deleting file 'x.out'" in text, text
    assert not (ws / "sub" / "x.out").exists()
    again = runner.start("2", "top", {}, None)  # the workspace is free: nothing is left
    runner.cancel(again.id)
    wait_done(again)


def test_a_run_that_succeeded_is_logged_at_debug_and_one_that_failed_at_info(
        workspace, tmp_path, caplog):
    """The controller logs every job's end; the worker adds a line at `info` only for a run
    that did not succeed (each line costs a job's round trip under Docker's log driver)."""
    (workspace / "Makefile").write_text("ok:\n\t@echo ok\nbad:\n\t@exit 3\n")
    r = Runner(str(workspace), str(tmp_path / "s"))
    caplog.set_level("DEBUG", logger="worker.runner")
    for run_id, target in (("1", "ok"), ("2", "bad")):
        wait_done(r.start(run_id, target, {}, None))
    wait_recorded(r)

    def ends():  # (the line comes after the run has left `active()`: wait for both)
        return {rec.getMessage().split(":")[0]: rec.levelname for rec in caplog.records
                if "make ok" in rec.getMessage() or "make bad" in rec.getMessage()}
    wait_for(lambda: len(ends()) == 2, what="both runs' end lines")
    assert ends() == {"run 1": "DEBUG", "run 2": "INFO"}


# --- found by a review of the worker (2026-12-06) ---------------------------------------------
def test_a_job_timeout_beyond_what_poll_takes_at_once_still_waits_for_make(tmp_path):
    """poll() takes at most 2**31 - 1 ms (24.8 days): WORKER_JOB_TIMEOUT=3000000 made every
    build `lost` at once (OverflowError) while make went on, unwatched and holding its lock."""
    import subprocess

    quick = subprocess.Popen(["sh", "-c", "sleep 0.2; exit 3"])
    assert runner_module.exited(quick, 3_000_000)
    assert quick.wait() == 3
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "Makefile").write_text("ok:\n\t@sleep 0.2; echo ok\n")
    r = Runner(str(ws), str(tmp_path / "s"), job_timeout=3_000_000)
    run = wait_done(r.start("1", "ok", {}, None))
    assert (run.state, run.error) == (RunState.SUCCEEDED, None)


def test_make_is_stopped_and_reaped_when_the_worker_loses_track_of_it(workspace, tmp_path,
                                                                       monkeypatch):
    """A run ended `lost` by a failure while waiting must not leave make running, with its
    lock and no time limit, nor a zombie."""
    def broken(proc, timeout):
        raise OSError("waiting failed")
    monkeypatch.setattr(runner_module, "exited", broken)
    r = Runner(str(workspace), str(tmp_path / "s"), kill_grace=1)
    run = wait_done(r.start("1", "slow", {}, None))
    assert (run.state, run.error) == (RunState.LOST, "the worker lost track of make")
    assert runner_module._process_start(run.pid) is None  # gone, and not a zombie
    wait_recorded(r)
    # The workspace lock was let go: once make's whole group has exited (SIGKILL reaches the
    # recipe's shell and `sleep` a moment after make itself was reaped).
    deadline = time.monotonic() + 5
    while True:
        try:
            second = r.start("2", "other", {}, None)
            break
        except Busy:
            assert time.monotonic() < deadline, "the killed build's lock was never let go"
            time.sleep(0.01)
    r.cancel("2")
    wait_done(second)


def _foreign_record(tmp_path, runner, run_id, owner_pid):
    """A run another worker process on the same state folder records as running."""
    run = runner_module.Run(id=run_id, target="slow", vars={}, started_at=time.time(),
                            owner_pid=owner_pid, host=runner.host)
    (tmp_path / "s" / "runs" / f"{run_id}.log").write_bytes(b"+ make slow\n")
    (tmp_path / "s" / "runs" / f"{run_id}.json").write_text(json.dumps(run.record()) + "\n")
    old = time.time() - 3600  # the oldest in the folder
    for ext in (".json", ".log"):
        os.utime(tmp_path / "s" / "runs" / f"{run_id}{ext}", (old, old))
    return run


def test_pruning_leaves_a_running_build_of_a_sibling_worker_alone(workspace, tmp_path):
    """Two workers on one state folder (the default folder of two on one workspace): the one
    that pruned deleted the other's running build's log and record mid-build."""
    import subprocess

    r = Runner(str(workspace), str(tmp_path / "s"), keep_runs=2)
    sibling = subprocess.Popen(["sleep", "60"])
    try:
        _foreign_record(tmp_path, r, "long", sibling.pid)
        _foreign_record(tmp_path, r, "orphan", 2**22 + 7)  # its worker is gone: prunable
        for i in range(5):
            wait_done(r.start(str(i), "ok", {}, None))
            wait_recorded(r)
        names = {p.name for p in (tmp_path / "s" / "runs").iterdir()}
        assert {"long.json", "long.log"} <= names
        assert "orphan.json" not in names
    finally:
        sibling.kill()
        sibling.wait()


def test_a_follower_of_a_sibling_workers_run_sees_its_end(workspace, tmp_path):
    """A run read from its record (another worker process runs it) ends for its followers when
    its record says so, or when no live worker owns it any more."""
    import subprocess

    r = Runner(str(workspace), str(tmp_path / "s"))
    sibling = subprocess.Popen(["sleep", "60"])
    try:
        _foreign_record(tmp_path, r, "long", sibling.pid)
        run = r.get("long")
        r.refresh(run)
        assert not run.done.is_set()  # still running over there
        ended = runner_module.Run(**{**run.record(), "state": RunState.SUCCEEDED,
                                     "exit_code": 0, "finished_at": time.time()})
        with open(tmp_path / "s" / "runs" / "long.json", "a") as f:
            f.write(json.dumps(ended.record()) + "\n")
        r.refresh(run)
        assert run.done.is_set() and (run.state, run.exit_code) == (RunState.SUCCEEDED, 0)
        _foreign_record(tmp_path, r, "dead", sibling.pid)
        gone = r.get("dead")
        sibling.kill()
        sibling.wait()
        r.refresh(gone)
        assert (gone.state, gone.error) == (RunState.LOST,
                                            "the worker process that ran it is gone")
    finally:
        sibling.kill()
        sibling.wait()


def test_an_ended_runs_record_waits_for_its_followers_end_but_not_for_ever(workspace, tmp_path,
                                                                          monkeypatch):
    """The record of an ended run is written after its followers have sent the end (the thread
    writing it would compete with theirs for the interpreter lock), or END_FIRST later if a
    follower lingers."""
    (workspace / "Makefile").write_text(
        "gated:\n\t@while [ ! -e $(GATE) ]; do sleep 0.01; done\n")
    r = Runner(str(workspace), str(tmp_path / "s"))
    followers_at_save = []
    save_end = r._save_end
    monkeypatch.setattr(r, "_save_end", lambda run: followers_at_save.append(run.followers)
                        or save_end(run))
    monkeypatch.setattr(runner_module, "END_FIRST", 60.0)
    run = r.start("1", "gated", {"GATE": str(tmp_path / "go1")}, None)
    with r.following(run):  # make ends only once this follower is there
        (tmp_path / "go1").touch()
        wait_done(run)
        time.sleep(0.2)
        assert followers_at_save == [] and r.active()  # waits for this follower
    wait_recorded(r)
    assert followers_at_save == [0] and r.get("1").state is RunState.SUCCEEDED

    monkeypatch.setattr(runner_module, "END_FIRST", 0.1)
    run = r.start("2", "gated", {"GATE": str(tmp_path / "go2")}, None)
    with r.following(run):  # a follower that does not leave: the record is written anyway
        (tmp_path / "go2").touch()
        wait_done(run)
        wait_recorded(r)
        assert followers_at_save == [0, 1]
    assert json.loads((tmp_path / "s" / "runs" / "2.json").read_text().splitlines()[-1])[
        "state"] == "succeeded"


def test_a_followed_runs_record_is_written_once_its_stream_has_sent_the_end(tmp_path,
                                                                            monkeypatch):
    """The worker's run frames streams are the followers the record waits for."""
    from worker import create_app

    ws = tmp_path / "ws"
    ws.mkdir()
    # make ends once the stream follows it (the stream's generator starts at its first
    # frame): ending before, on a loaded machine, it had no follower to wait for.
    # (Bounded: a test that fails before the file is made must not leave make looping.)
    (ws / "Makefile").write_text("brief:\n\t@i=0; while [ ! -e go ] && [ $$i -lt 1000 ]; do "
                                 "sleep 0.01; i=$$((i+1)); done; echo hi\n")
    monkeypatch.setattr(runner_module, "END_FIRST", 60.0)
    app = create_app({"WORKDIR": str(ws), "STATE_DIR": str(tmp_path / "s"), "TOKEN": "t"})
    r = app.extensions["runner"]
    resp = app.test_client().post("/runs", json={"id": "1", "target": "brief", "follow": True},
                                  headers={"Authorization": "Bearer t"}, buffered=False)
    assert resp.status_code == 201, resp.get_data()
    frames = iter(resp.response)
    got = next(frames)
    assert got.startswith(b"run {") and r.get("1").followers == 1
    (ws / "go").touch()
    while b"end {" not in got:
        got += next(frames)
    time.sleep(0.2)
    assert [run.id for run in r.active()] == ["1"]  # the end is out; the stream is not done
    assert b"".join(frames) == b""
    resp.close()
    wait_recorded(r)
    assert r.get("1").state is RunState.SUCCEEDED


def test_a_runs_own_process_ends_it_not_refresh(workspace, tmp_path):
    r = Runner(str(workspace), str(tmp_path / "s"), kill_grace=1)
    run = r.start("1", "slow", {}, None)
    r.refresh(run)
    assert not run.done.is_set() and run.state is RunState.RUNNING
    r.cancel("1")
    wait_done(run)


def test_a_question_about_a_run_waits_for_its_start_under_way(workspace, tmp_path):
    """A controller whose start timed out asks whether the run exists: answered "unknown"
    while the start was still at its checks, it started the job on another worker too."""
    import threading

    r = Runner(str(workspace), str(tmp_path / "s"))
    entered = threading.Event()

    def slow_start():
        with r.starting("x"):
            entered.set()
            time.sleep(0.5)  # as a makefile slow to read
            r.start("x", "ok", {}, None)
    starter = threading.Thread(target=slow_start)
    starter.start()
    assert entered.wait(5)
    with pytest.raises(runner_module.RunStarting):
        r.get("x", start_wait=0.05)
    assert r.get("x", start_wait=5).id == "x"  # once the start is through: the run
    starter.join(5)
    wait_done(r.get("x"))
    with pytest.raises(runner_module.UnknownRun):
        r.get("never")


def test_a_start_its_sender_gave_up_on_does_not_start(workspace, tmp_path):
    """Once the controller has given up on a start (and may ask another worker), make must not
    start here: the start looks at its sender last, and nothing of the run is left."""
    r = Runner(str(workspace), str(tmp_path / "s"))
    with pytest.raises(runner_module.StartAbandoned):
        r.start("gone", "ok", {}, None, wanted=lambda: False)
    with pytest.raises(runner_module.UnknownRun):
        r.get("gone")
    assert list((tmp_path / "s" / "runs").iterdir()) == []
    wait_done(r.start("gone", "ok", {}, None))  # the id is free: a start that is wanted runs


def test_a_start_whose_sender_has_gone_is_given_up_by_the_question_at_once(workspace, tmp_path):
    """The controller asks only after it gave up on its start (it closed the connection): the
    answer is "unknown" at once, not after the start's slow checks, and that start then does
    not start: a job the controller moves to another worker runs once."""
    import threading

    r = Runner(str(workspace), str(tmp_path / "s"))
    entered, checked = threading.Event(), threading.Event()
    outcome = []

    def abandoned_start():
        with r.starting("x", lambda: False) as wanted:  # its sender has hung up
            entered.set()
            assert checked.wait(5)  # its checks take until after the question
            try:
                r.start("x", "ok", {}, None, wanted=wanted)
            except runner_module.StartAbandoned:
                outcome.append("abandoned")
    starter = threading.Thread(target=abandoned_start)
    starter.start()
    assert entered.wait(5)
    began = time.monotonic()
    with pytest.raises(runner_module.UnknownRun):
        r.get("x", start_wait=10)
    assert time.monotonic() - began < 5  # not the 10 s wait for a start whose sender waits
    checked.set()
    starter.join(5)
    assert outcome == ["abandoned"]


def test_a_known_run_is_answered_at_once_even_with_a_repeat_of_its_start_under_way(
        workspace, tmp_path):
    import threading

    r = Runner(str(workspace), str(tmp_path / "s"), kill_grace=1)
    run = r.start("x", "slow", {}, None)
    release = threading.Event()

    def repeat():  # a repeated start of the same id, stuck at its checks
        with r.starting("x"):
            release.wait(5)
    stuck = threading.Thread(target=repeat)
    stuck.start()
    try:
        assert r.get("x", start_wait=10) is run  # (before: RunStarting after the wait)
        began = time.monotonic()
        # a cancel does not wait for a start under way: its sender asks again
        with pytest.raises(runner_module.RunStarting), r.starting("y"):
            r.cancel("y")
        assert time.monotonic() - began < 1
        r.cancel("x")
        wait_done(run)
    finally:
        release.set()
        stuck.join(5)
