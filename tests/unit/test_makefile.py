"""Targets and their `##` descriptions, read through the real make."""

import pytest

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


def test_a_broken_makefile_is_a_clear_error(tmp_path):
    (tmp_path / "Makefile").write_text("a:\n    not a tab\n")
    with pytest.raises(MakefileError, match="missing separator"):
        TargetCatalog(str(tmp_path)).targets()


def test_both_comment_conventions_are_read():
    docs = parse_descriptions("## a: first\nb c: dep ## second\nV = 1 ## no\nW := 2 ## no\n")
    assert docs == {"a": "first", "b": "second", "c": "second"}
