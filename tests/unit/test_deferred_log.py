"""Lines below WARNING written a moment later and together; warnings at once, in order."""

import io
import logging
import os
import threading
import time

import pytest

from tests.integration.procs import wait_for
from worker.deferred_log import DeferredHandler


class Stream(io.StringIO):
    """Counts its writes."""

    writes = 0

    def write(self, text):
        self.writes += 1
        return super().write(text)


@pytest.fixture
def logged_with():
    """logged_with(delay): a logger whose records go through a DeferredHandler into a string
    (the handler, and the string's stream)."""
    made = []

    def make(delay: float):
        stream = Stream()
        target = logging.StreamHandler(stream)
        target.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        handler = DeferredHandler(target, delay=delay)
        logger = logging.getLogger(f"deferred-test-{id(stream)}")
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
        made.append((logger, handler))
        return logger, handler, stream

    yield make
    for logger, handler in made:
        logger.removeHandler(handler)
        handler.close()


@pytest.fixture
def logged(logged_with):
    """Held for 30 s: nothing is written by the handler's thread during a test."""
    return logged_with(30)


def test_lines_below_warning_are_held_then_written_with_one_write(logged):
    logger, handler, stream = logged
    logger.info("one")
    logger.debug("two")
    assert stream.getvalue() == ""  # held: nothing written as they came
    handler.flush()
    assert stream.getvalue() == "INFO one\nDEBUG two\n" and stream.writes == 1


def test_held_lines_are_written_by_the_handlers_thread_soon(logged_with):
    logger, _, stream = logged_with(0.05)
    logger.info("soon")
    wait_for(lambda: stream.getvalue() == "INFO soon\n", timeout=10, what="the held line")


def test_a_warning_writes_what_was_held_first_then_itself_at_once(logged):
    logger, _, stream = logged
    logger.info("before")
    logger.warning("careful")
    assert stream.getvalue() == "INFO before\nWARNING careful\n"
    logger.error("broken")
    assert stream.getvalue().endswith("ERROR broken\n")


def test_closing_writes_what_is_held_and_later_lines_at_once(logged):
    """logging.shutdown (at a normal exit) closes every handler: nothing held is lost, and a
    thread that logs after it is still heard."""
    logger, handler, stream = logged
    logger.info("last words")
    handler.close()
    assert stream.getvalue() == "INFO last words\n"
    logger.info("after the end")
    assert stream.getvalue().endswith("INFO after the end\n")


def test_a_line_is_written_at_once_when_no_thread_can_start(logged, monkeypatch):
    """At interpreter shutdown (Python 3.12) or under a pids limit: the logging call does not
    raise, and the line is not held for ever."""
    logger, _, stream = logged

    def refuse(self):
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    logger.info("still heard")
    assert stream.getvalue() == "INFO still heard\n"


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
