"""Targets and their `##` descriptions, read through the real make."""

import fcntl
import os

import pytest

from worker import makefile
from worker.makefile import MakefileError, TargetCatalog, parse_descriptions

MAKEFILE = """\
include extra.mk
## html: build the site
html: a b
\t@echo html
clean: ## remove outputs
\trm -f out
%.o: %.c
\tcc $<
x y: ; @echo $@
VAR := 1 ## not a target
.PHONY: html clean
"""


def test_it_lists_real_targets_with_descriptions(tmp_path):
    (tmp_path / "Makefile").write_text(MAKEFILE)
    (tmp_path / "extra.mk").write_text("extra: ## from an included file\n\t@echo\n")
    targets = {t.name: t.description for t in TargetCatalog(str(tmp_path)).targets()}
    assert targets == {"html": "build the site", "clean": "remove outputs", "x": "", "y": "",
                       "extra": "from an included file"}


def test_it_rereads_when_the_makefile_changes(tmp_path):
    (tmp_path / "Makefile").write_text("a:\n\t@true\n")
    catalog = TargetCatalog(str(tmp_path))
    assert [t.name for t in catalog.targets()] == ["a"]
    (tmp_path / "Makefile").write_text("a:\n\t@true\nb: ## new\n\t@true\n")
    assert [t.name for t in catalog.targets()] == ["a", "b"]


def _held(folder, kind):
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, kind)
    return fd  # a build holding the workspace, until closed


def test_while_a_build_holds_the_workspace_only_a_makefile_change_makes_the_list_stale(tmp_path):
    """A build writing any file in the folder changed its mtime, which was in the stamp: every
    such build turned the list stale. Only makefiles count now."""
    (tmp_path / "Makefile").write_text("a:\n\t@true\n")
    catalog = TargetCatalog(str(tmp_path))
    assert catalog.read() == (catalog.targets(), False)
    fd = _held(tmp_path, fcntl.LOCK_EX)
    try:
        (tmp_path / "out.txt").write_text("built")
        assert catalog.read()[1] is False
        (tmp_path / "Makefile").write_text("a:\n\t@true\nb:\n\t@true\n")
        listed, stale = catalog.read()
        assert stale is True and [t.name for t in listed] == ["a"]
    finally:
        os.close(fd)
    listed, stale = catalog.read()
    assert stale is False and [t.name for t in listed] == ["a", "b"]


def test_with_target_locks_the_list_is_read_beside_other_targets_builds(tmp_path):
    (tmp_path / "Makefile").write_text("a:\n\t@true\n")
    catalog = TargetCatalog(str(tmp_path), lock_mode="target")
    catalog.targets()
    fd = _held(tmp_path, fcntl.LOCK_SH)  # how a build holds the folder in this mode
    try:
        (tmp_path / "GNUmakefile").write_text("g:\n\t@true\n")  # make reads this one first
        listed, stale = catalog.read()
        assert stale is False and [t.name for t in listed] == ["g"]
    finally:
        os.close(fd)


def test_a_broken_makefile_is_a_clear_error(tmp_path):
    (tmp_path / "Makefile").write_text("a:\n    not a tab\n")
    with pytest.raises(MakefileError, match="missing separator"):
        TargetCatalog(str(tmp_path)).targets()


def test_both_comment_conventions_are_read():
    docs = parse_descriptions("## a: first\nb c: dep ## second\nV = 1 ## no\nW := 2 ## no\n")
    assert docs == {"a": "first", "b": "second", "c": "second"}


def test_a_makefile_included_only_once_it_exists_is_read_within_a_minute(tmp_path, monkeypatch):
    """`-include local.mk` names no file until local.mk exists, so its coming changed nothing
    the list was stamped with: its targets never appeared until a worker restart."""
    (tmp_path / "Makefile").write_text("all:\n\t@true\n-include local.mk\n")
    catalog = TargetCatalog(str(tmp_path))
    assert [t.name for t in catalog.targets()] == ["all"]
    (tmp_path / "local.mk").write_text("deploy:\n\t@true\n")
    assert [t.name for t in catalog.targets()] == ["all"]  # within REREAD_AFTER: as read
    monkeypatch.setattr(makefile, "REREAD_AFTER", 0.0)
    assert [t.name for t in catalog.targets()] == ["all", "deploy"]


def test_a_makefile_changed_while_make_reads_it_is_read_again(tmp_path, monkeypatch):
    (tmp_path / "Makefile").write_text("all:\n\t@true\n")
    catalog = TargetCatalog(str(tmp_path))
    real = makefile.read_database

    def edited_meanwhile(workdir):
        database = real(workdir)
        with open(tmp_path / "Makefile", "a") as f:  # (a git pull landing during the read)
            f.write("deploy:\n\t@true\n")
        return database

    monkeypatch.setattr(makefile, "read_database", edited_meanwhile)
    assert [t.name for t in catalog.targets()] == ["all"]
    monkeypatch.setattr(makefile, "read_database", real)
    assert [t.name for t in catalog.targets()] == ["all", "deploy"]


def test_a_workspace_that_cannot_be_opened_is_a_makefile_error(tmp_path):
    catalog = TargetCatalog(str(tmp_path / "gone"))
    with pytest.raises(MakefileError, match="cannot open the workspace"):
        catalog.targets()


def test_a_folder_without_a_makefile_is_an_error_unless_makefiles_names_one(tmp_path,
                                                                            monkeypatch):
    with pytest.raises(makefile.MakefileError, match="there is no makefile"):
        makefile.read_database(str(tmp_path))
    common = tmp_path.parent / f"{tmp_path.name}-common.mk"
    common.write_text("hello: ## say hello\n\t@echo hello\n")
    monkeypatch.setenv("MAKEFILES", str(common))
    names, _ = makefile.parse_targets(makefile.read_database(str(tmp_path)))
    assert names == ["hello"]


def test_a_makefile_read_that_times_out_leaves_no_process_behind(tmp_path):
    """`$(shell ...)` runs while make reads the makefile: a read that timed out killed make
    only, and left what the shell started running (its parent then init) after each try."""
    import os
    import time

    (tmp_path / "Makefile").write_text(
        "X := $(shell echo $$$$ > $(CURDIR)/pid; sleep 30)\nall:\n\t@:\n")
    try:
        makefile.read_database(str(tmp_path), timeout=0.5)
    except makefile.MakefileError as exc:
        assert "timed out" in str(exc)
    else:
        raise AssertionError("the read did not time out")
    pid = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    raise AssertionError(f"the shell of $(shell ...) (pid {pid}) still runs")
