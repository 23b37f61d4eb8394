"""Reading a workspace's targets, and their `##` descriptions, from make's own database."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from . import rules

log = logging.getLogger(__name__)

# `## target: description` on a line of its own, or `target: deps ## description`.
_DOC_LINE = re.compile(r"^##\s*([^\s:#=]+)\s*:\s*(.*?)\s*$")
_DOC_INLINE = re.compile(r"^([^\s:#=][^:#=]*?)\s*::?(?!=)[^#=]*?##\s*(.*?)\s*$")
_RULE = re.compile(r"^([^#\s:=][^:=]*?)::?(?:\s|$)")
_MAKEFILE_LIST = re.compile(r"^MAKEFILE_LIST :?= (.*)$")


QUIET_WAIT = 5.0  # seconds a first reading of the targets waits for a build to end
REREAD_AFTER = 60.0  # seconds a list is taken as current while no makefile it names changed


class MakefileError(RuntimeError):
    """make could not read the workspace's makefile."""


@dataclass(frozen=True)
class Target:
    name: str
    description: str

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description}


DEFAULT_MAKEFILES = ("GNUmakefile", "makefile", "Makefile")  # what make reads, in its order


def _may_have_makefile(workdir: str) -> bool:
    """False only when make surely has no makefile to read there: none of its default names
    exists (whatever the file's kind) and no MAKEFILES names one in the environment make gets."""
    if os.environ.get("MAKEFILES", "").strip():
        return True
    for name in DEFAULT_MAKEFILES:
        try:
            os.stat(os.path.join(workdir, name))
            return True
        except FileNotFoundError:
            continue
        except OSError:  # cannot tell (a folder it may not search): make's own error says
            return True
    return False


def no_makefile(workdir: str) -> str:
    return (f"there is no makefile ({', '.join(DEFAULT_MAKEFILES)}) in {workdir}: is the right "
            "folder mounted there?")


def read_database(workdir: str, timeout: float = 30) -> str:
    """make's printed database for `workdir`, without running any recipe (`-pRrq`). A folder
    without a makefile is an error, not an empty list: make prints a database all the same,
    and a mistyped or unmounted workspace looked like a makefile without targets."""
    if not _may_have_makefile(workdir):
        raise MakefileError(no_makefile(workdir))
    try:  # in a group of its own: what `$(shell ...)` started goes too when it times out
        proc = subprocess.Popen(
            ["make", "-C", workdir, "-pRrq", "--", ":"], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            env=rules.build_environ(os.environ, LC_ALL="C"))  # make's messages, untranslated
    except OSError as exc:
        raise MakefileError(f"could not run make: {exc}") from exc
    with proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=5)  # reaped (a child that left the group may hold on)
            raise MakefileError(f"could not run make: {exc}") from None
    return check_database(stdout, stderr)


def check_database(stdout: bytes, stderr: bytes) -> str:
    """The printed database of `make -pRrq -- :`, or MakefileError with make's own complaint."""
    out = stdout.decode("utf-8", "replace")
    # make always complains that ':' (the goal asked for) has no rule; anything else is real.
    errors = [line for line in stderr.decode("utf-8", "replace").splitlines()
              if "***" in line and "No rule to make target ':'" not in line]
    if errors or "\n# Files" not in out:
        detail = "; ".join(errors) or "no database printed"
        raise MakefileError(f"make could not read the makefile: {detail}")
    return out


def parse_targets(database: str) -> tuple[list[str], list[str]]:
    """(target names, makefile paths) from a printed database; no special or pattern targets."""
    makefiles: list[str] = []
    names: list[str] = []
    in_files = False
    not_a_target = False
    for line in database.splitlines():
        if not in_files:
            m = _MAKEFILE_LIST.match(line)
            if m:
                makefiles = m.group(1).split()
            if line == "# Files":
                in_files = True
            continue
        if line.startswith("# files hash-table stats"):
            break
        if line == "# Not a target:":
            not_a_target = True
            continue
        if not line or line.startswith(("#", "\t")):
            continue
        if not_a_target:  # the comment applies to this entry, whatever its name looks like
            not_a_target = False
            continue
        m = _RULE.match(line)
        if m:
            names.extend(n for n in m.group(1).split() if not n.startswith(".") and "%" not in n)
    return sorted(set(names)), makefiles


def parse_descriptions(text: str) -> dict[str, str]:
    """`##` help comments of one makefile's text, by target name."""
    docs: dict[str, str] = {}
    for line in text.splitlines():
        m = _DOC_LINE.match(line)
        if m:
            docs.setdefault(m.group(1), m.group(2))
            continue
        m = _DOC_INLINE.match(line)
        if m:
            for name in m.group(1).split():
                docs.setdefault(name, m.group(2))
    return docs


class TargetCatalog:
    """The targets of one workspace, re-read only when a makefile changes (make's own makefile
    names, and those it read)."""

    def __init__(self, workdir: str, lock_mode: str = "workspace"):
        self.workdir = workdir
        self.lock_mode = lock_mode
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._makefiles: list[str] = []
        self._targets: list[Target] = []
        self._read_at = 0.0  # when the list was read (time.monotonic())

    def _stamp(self, paths: list[str]) -> tuple:
        stamp = []  # (make's own names: a makefile made or removed beside the one in use)
        for path in dict.fromkeys([*DEFAULT_MAKEFILES, *paths]):
            try:
                st = os.stat(os.path.join(self.workdir, path))
                stamp.append((path, st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                stamp.append((path, None))
        return tuple(stamp)

    def targets(self) -> list[Target]:
        """All buildable targets, with descriptions; raises MakefileError if make cannot read."""
        return self.read()[0]

    def read(self) -> tuple[list[Target], bool]:
        """The targets, and whether they may be stale: while a build holds the workspace, a
        list read before it stays in use even if a makefile changed. A list is also read again
        once REREAD_AFTER old, when the workspace is free: a makefile included only if it
        exists (`-include local.mk`, `$(wildcard mk/*.mk)`) is not among those make names
        until it does, so its coming is not seen otherwise."""
        with self._lock:
            unchanged = self._key is not None and self._key == self._stamp(self._makefiles)
            if unchanged and time.monotonic() - self._read_at < REREAD_AFTER:
                return self._targets, False
            with self._quiet_workspace(wait=0 if self._key is not None else QUIET_WAIT) as held:
                if not held and self._key is not None:
                    return self._targets, not unchanged
                if not held:
                    log.warning("reading the makefile while a build runs (none read before, "
                                "and the workspace stayed busy for %g s): make may remake "
                                "included makefiles beside that build", QUIET_WAIT)
                began = time.time_ns()
                database = read_database(self.workdir)
            names, makefiles = parse_targets(database)
            docs: dict[str, str] = {}
            for path in makefiles:
                try:
                    with open(os.path.join(self.workdir, path), encoding="utf-8",
                              errors="replace") as f:
                        for name, text in parse_descriptions(f.read()).items():
                            docs.setdefault(name, text)
                except OSError as exc:
                    log.warning("cannot read makefile %s: %s", path, exc)
            self._targets = [Target(n, docs.get(n, "")) for n in names]
            self._makefiles = makefiles
            self._key = self._stamp(makefiles)
            self._read_at = time.monotonic()
            if any(part[1] is not None and part[1] >= began for part in self._key):
                self._key = None  # a makefile changed while make read it: read it again
            return self._targets, False

    @contextmanager
    def _quiet_workspace(self, wait: float) -> Iterator[bool]:
        """Hold the workspace's build lock while make reads the makefile; yields whether it is
        held. GNU make remakes included makefiles that have rules (`-include $(DEPS)` with a
        `%.d:` rule) before anything else, even with -q, so reading the targets runs those
        recipes, which must not run beside a build. With WORKER_LOCK=workspace the lock is
        exclusive: no build runs meanwhile (one that starts then is refused as busy and
        retried). With `target`, builds of different targets run side by side and each remakes
        those makefiles itself; the listing is one more of them (shared), kept only from a
        build that holds the whole workspace."""
        kind = fcntl.LOCK_EX if self.lock_mode == "workspace" else fcntl.LOCK_SH
        try:
            fd = os.open(self.workdir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise MakefileError(f"cannot open the workspace {self.workdir}: {exc.strerror}"
                                ) from None
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, kind | fcntl.LOCK_NB)
                    held = True
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        held = False
                        break
                    time.sleep(0.05)
                except OSError as exc:  # (no locks on this file system: builds fail alike)
                    raise MakefileError(f"cannot lock the workspace {self.workdir}: "
                                        f"{exc.strerror}") from None
            yield held
        finally:
            os.close(fd)  # lets go of the lock
