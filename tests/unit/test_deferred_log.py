"""Lines below WARNING written a moment later and together; warnings at once, in order."""

import io
import logging
import os
import time

import pytest

from tests.integration.procs import wait_for
from worker.deferred_log import DeferredHandler


@pytest.fixture
def logged():
    """A logger whose records go through a DeferredHandler (delay 0.2 s) into a string."""
    stream = io.StringIO()
    target = logging.StreamHandler(stream)
    target.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler = DeferredHandler(target, delay=0.2)
    logger = logging.getLogger(f"deferred-test-{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, stream
    logger.removeHandler(handler)
    handler.close()


def test_lines_below_warning_are_held_then_written_together(logged):
    logger, stream = logged
    logger.info("one")
    logger.info("two")
    assert stream.getvalue() == ""  # held: nothing written as they came
    wait_for(lambda: "two" in stream.getvalue(), timeout=10, what="the held lines")
    assert stream.getvalue() == "INFO one\nINFO two\n"


def test_a_warning_writes_what_was_held_first_then_itself_at_once(logged):
    logger, stream = logged
    logger.info("before")
    logger.warning("careful")
    assert stream.getvalue() == "INFO before\nWARNING careful\n"
    logger.error("broken")
    assert stream.getvalue().endswith("ERROR broken\n")


def test_held_lines_are_written_when_the_handler_closes(logged):
    """logging.shutdown (at a normal exit) closes every handler: nothing held is lost."""
    logger, stream = logged
    logger.info("last words")
    logger.handlers[0].close()
    assert stream.getvalue() == "INFO last words\n"


def test_a_forked_child_does_not_write_what_its_parent_held(tmp_path):
    """gunicorn forks its workers from a master that logged: each line is written once."""
    path = tmp_path / "log.txt"
    with open(path, "w") as out:
        target = logging.StreamHandler(out)
        handler = DeferredHandler(target, delay=0.05)
        logger = logging.getLogger("deferred-test-fork")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        try:
            logger.info("parent held")
            pid = os.fork()
            if pid == 0:  # the child: its own line, written by its own thread
                try:
                    logger.info("child line")
                    deadline = time.monotonic() + 10
                    while handler.buffer and time.monotonic() < deadline:
                        time.sleep(0.01)
                    out.flush()
                finally:
                    os._exit(0 if not handler.buffer else 1)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            wait_for(lambda: not handler.buffer, timeout=10, what="the parent's line")
            out.flush()
        finally:
            logger.removeHandler(handler)
            handler.close()
    lines = path.read_text().splitlines()
    assert sorted(lines) == ["child line", "parent held"]
