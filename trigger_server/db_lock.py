"""One controller per database.

The dispatcher's state (what is being started, followed, cancelled) lives in its process, so a
second controller on the same database would start, cancel and join jobs behind the first one's
back. The serving process holds an exclusive lock on `<database>.lock` for as long as it runs,
taken before the app opens the database (trigger_server.serving_app: opening it adds a
newer version's columns); another waits for it a while (a restarting controller's predecessor
may still be finishing its requests), then gives up naming the holder, or stops waiting when
told to stop.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time

log = logging.getLogger(__name__)

WAIT = 15.0  # more than gunicorn's graceful_timeout: a predecessor shutting down lets go


class DatabaseInUse(RuntimeError):
    """Another controller serves from this database (or its lock file cannot be made)."""


def hold(db_path: str, wait: float = WAIT) -> int:
    """Lock the database for this process and return the lock's fd (keep it open: closing it,
    or the process ending, lets go). Raises DatabaseInUse after `wait` seconds."""
    path = db_path + ".lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise DatabaseInUse(f"cannot create {path}: {exc.strerror}") from None
    deadline = time.monotonic() + wait
    waiting, sigterm = False, None  # (sigterm: the handler the wait replaced)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(fd)
                if time.monotonic() >= deadline:
                    raise DatabaseInUse(f"database {db_path} is in use by another controller "
                                        f"(pid {holder} on its host); one controller per "
                                        "database") from None
                if not waiting:
                    waiting, sigterm = True, _stop_on_sigterm()
                    log.warning("database %s is in use by another controller (pid %s); "
                                "waiting up to %g s for it to stop", db_path, holder, wait)
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    finally:
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
            if callable(sigterm):  # as gunicorn sets its handlers: system calls go on after it
                signal.siginterrupt(signal.SIGTERM, False)
    return fd


def _stop_on_sigterm():
    """A process told to stop while it waits stops waiting and exits, rather than take the
    database later and start serving in the middle of its shutdown: gunicorn's master under
    --preload, which has no handler of its own yet (as PID 1 in a container, SIGTERM without a
    handler is ignored); its worker exits by itself (gunicorn_worker.ControllerWorker).
    Returns the handler it replaced (None if it did not: only the main thread can)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _exit)
    return signal.SIG_DFL if previous is None else previous  # (None: set outside Python)


def _exit(signum, frame):
    raise SystemExit(0)


def _holder(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode().strip() or "?"
    except (OSError, UnicodeDecodeError):
        return "?"
