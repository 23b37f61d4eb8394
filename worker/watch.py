"""Watching the workspace: edits to source files become build requests.

`TRIGGER_WATCH` holds `<glob> <target>` lines (e.g. `_episodes_rmd/*.Rmd lesson-md`); globs are
matched against paths relative to the workspace. The watchdog library delivers inotify events,
or polls (`WORKER_WATCH_POLLING=1`, and automatically when inotify cannot start) for bind mounts
that do not deliver events. Changes are debounced: a target is requested once its files have
been quiet for `WORKER_WATCH_DEBOUNCE` seconds, so saving ten files means one build. Changes made
while a build holds the workspace, or just after one ended, are the build's own and are ignored.

The controller collects the requests through the worker's health checks (`GET /healthz?ack=N`),
so the worker needs to know nothing about the controller. Each request says how long ago its
files last changed (`changed_ago`, by the monotonic clock as it is answered; and `changed_at`):
replicas sharing a workspace all see one edit, and the controller starts one build for it, not
one per replica.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass

from . import rules

log = logging.getLogger(__name__)

KEEP_EVENTS = 100


class WatchError(ValueError):
    """A TRIGGER_WATCH line that cannot be used."""


@dataclass(frozen=True)
class Rule:
    glob: str
    target: str


def parse(text: str) -> list[Rule]:
    """The `<glob> <target>` lines of TRIGGER_WATCH; raises WatchError naming the line."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise WatchError(f"TRIGGER_WATCH line {number}: expected '<glob> <target>'")
        glob, target = parts
        if glob.startswith("/") or ".." in glob.split("/"):
            raise WatchError(f"TRIGGER_WATCH line {number}: the glob must stay inside the "
                             "workspace (relative, no '..')")
        try:
            rules.check_target_syntax(target)
        except rules.RuleError as exc:
            raise WatchError(f"TRIGGER_WATCH line {number}: {exc}") from None
        found.append(Rule(glob, target))
    return found


class Watcher:
    """Debounced change detection for one workspace; `pending(ack)` hands out requests."""

    def __init__(self, workdir: str, watch_rules: list[Rule], runner, *, debounce: float = 2.0,
                 polling: bool = False, ignore: tuple[str, ...] = (".maketrigger/*", ".git/*")):
        self.workdir = os.path.realpath(workdir)
        self.rules = watch_rules
        self.runner = runner
        self.debounce = debounce
        self.polling = polling
        self.ignore = ignore
        self.boot = uuid.uuid4().hex[:12]  # tells the controller our event numbers restarted
        self._lock = threading.Lock()
        self._changed: dict[str, tuple[float, set[str]]] = {}  # target -> (last change, paths)
        self._events: list[dict] = []
        self._seq = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._observer = None

    # --- events in ----------------------------------------------------------------------------
    def start(self) -> None:
        if not self.rules:
            return
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                if event.event_type in ("opened", "closed_no_write"):
                    return
                for path in (event.src_path, getattr(event, "dest_path", "")):
                    if path:
                        watcher.changed(os.fsdecode(path))

        observer = None
        if not self.polling:
            try:
                observer = Observer()
                observer.schedule(Handler(), self.workdir, recursive=True)
                observer.start()
            except OSError as exc:
                log.warning("inotify unavailable (%s); polling the workspace instead", exc)
                observer = None
        if observer is None:
            observer = PollingObserver(timeout=1)
            observer.schedule(Handler(), self.workdir, recursive=True)
            observer.start()
        self._observer = observer
        threading.Thread(target=self._loop, name="watch", daemon=True).start()
        log.info("watching %s: %s", self.workdir,
                 ", ".join(f"{r.glob} -> {r.target}" for r in self.rules))

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()

    def changed(self, path: str) -> None:
        """One changed path (absolute); remembered for every rule whose glob it matches."""
        rel = os.path.relpath(path, self.workdir)
        if rel.startswith("..") or any(fnmatch.fnmatchcase(rel, g) for g in self.ignore):
            return
        if self.build_running():
            return  # the build's own output
        now = time.monotonic()
        with self._lock:
            for rule in self.rules:
                if fnmatch.fnmatchcase(rel, rule.glob):
                    paths = self._changed.get(rule.target, (now, set()))[1]
                    paths.add(rel)
                    self._changed[rule.target] = (now, paths)
                    self._wake.set()

    def build_running(self) -> bool:
        """Whether a build holds the workspace (from any worker sharing it), or this worker's
        last build ended less than a debounce period ago."""
        if self.runner.active() or time.time() - self.runner.last_end < self.debounce:
            return True
        try:
            fd = os.open(self.workdir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        except OSError as exc:
            return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
        finally:
            os.close(fd)

    def _loop(self) -> None:
        while not self._stop.is_set():
            # Nothing pending: asleep until a change (a zero debounce must not spin here).
            self._wake.wait(max(self.debounce, 0.05) if self._changed else None)
            self._wake.clear()
            now = time.monotonic()
            with self._lock:
                quiet = [t for t, (last, _) in self._changed.items()
                         if now - last >= self.debounce]
                for target in quiet:
                    last, paths = self._changed.pop(target)
                    self._seq += 1
                    at = time.time()  # changed_at: the last change, on the same clock
                    self._events.append({"seq": self._seq, "target": target,
                                         "paths": sorted(paths)[:20], "at": at,
                                         "changed_at": at - (now - last), "_last": last})
                    log.info("changes to %s: requesting %s", ", ".join(sorted(paths)[:5]), target)
                del self._events[:-KEEP_EVENTS]
            if self._changed:
                self._stop.wait(0.2)  # come back before the quiet period of the rest ends
                self._wake.set()

    # --- requests out ---------------------------------------------------------------------------
    def pending(self, ack: int) -> list[dict]:
        """Requests newer than `ack`; the ones up to `ack` were taken and are forgotten. Each
        says how long ago its files last changed (`changed_ago`, on the monotonic clock: the
        controller places the change on its own clock by it, whatever this host's clock says
        or does meanwhile) and when (`changed_at`, this host's clock, for older controllers)."""
        with self._lock:
            now = time.monotonic()
            self._events = [e for e in self._events if e["seq"] > ack]
            return [{**{k: v for k, v in e.items() if k != "_last"},
                     "changed_ago": now - e["_last"]} for e in self._events]
