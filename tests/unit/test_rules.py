"""What may reach make's command line (worker/rules.py), as a validation matrix and as
properties over arbitrary input."""

import json
import os
import string
import subprocess
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker import rules


@pytest.mark.parametrize("target", ["html", "lesson-md", "out/file.txt", "a_b.c", "x:y"[:1],
                                    "site+assets", "über"])
def test_it_accepts_ordinary_target_names(target):
    assert rules.check_target_syntax(target) == target


@pytest.mark.parametrize("target,rule", [
    ("-n", "start with '-'"),
    ("CC=gcc", "'='"),
    ("a b", "whitespace"),
    ("a\tb", "whitespace"),
    ("a\nb", "whitespace"),
    ("$(shell id)", "'$'"),
    ("`id`", "backticks"),
    ("'a'", "quotes"),
    ('"a"', "quotes"),
    ("a;b", "';'"),
    ("a|b", "'|'"),
    ("a&b", "'&'"),
    ("a\0b", "NUL"),
    ("a\x1bb", "control characters"),
    ("", "empty"),
    (".DEFAULT", "start with '.'"),
    ("%.o", "'%'"),
    ("x" * 201, "at most"),
    (None, "target is required"),
    (3, "string"),
])
def test_it_rejects_a_target_naming_the_rule(target, rule):
    with pytest.raises(rules.RuleError, match=None) as err:
        rules.check_target_syntax(target)
    assert rule in str(err.value)


@pytest.mark.parametrize("name", sorted(rules.REFUSED_VARS) + ["MAKEFOO", ".X", "MAKE_J"])
def test_it_always_refuses_variables_that_change_how_make_runs(name):
    with pytest.raises(rules.RuleError):
        rules.check_var_name(name)


@pytest.mark.parametrize("value", ["$(shell id)", "${HOME}", "`id`", "a'b", 'a"b', "a;b", "a|b",
                                   "a&b", "a<b", "a>b", "a\nb", "a\rb", "a\0b", "x" * 5000])
def test_it_rejects_values_that_could_execute(value):
    with pytest.raises(rules.RuleError):
        rules.check_var_value("V", value)


@pytest.mark.parametrize("value", ["-x", "--delete", ". -exec touch pwned +", "a\t-b", "-",
                                   "a  --force", "m.c @opts.txt", "+%s"])
def test_it_refuses_values_that_a_recipe_would_pass_on_as_options(value):
    """Recipes mostly use $(V) unquoted, so the shell splits it into words: a word starting
    with '-' reaches the program as an option (`find $(DIR)` runs DIR=". -exec ...")."""
    with pytest.raises(rules.RuleError) as err:
        rules.check_var_value("V", value)
    assert "must not start a word with '-', '+' or '@'" in str(err.value)


@pytest.mark.parametrize("value,shown", [
    (". \\-exec touch pwned +", "\\"),  # the shell drops the backslash: -exec
    ("{x,-rf}", "{ }"),  # bash's brace expansion: the words x and -rf
    ("x #", "#"),  # comments out the rest of the recipe line
    ("a*", "*"), ("a?", "?"), ("[ab]", "[ ]"), ("~root", "~"), ("a!b", "!"), ("a(b)", "( )"),
    ("a\u00a0-b", "\xa0"),  # no shell splits there: one word, not an option after all
    ("html SHELL=/bin/x", "="),  # a word a make run by the recipe takes as an assignment
])
def test_it_refuses_what_a_shell_would_read_in_a_value(value, shown):
    with pytest.raises(rules.RuleError) as err:
        rules.check_var_value("V", value)
    assert f"must not contain {shown!r}" in str(err.value)


@pytest.mark.parametrize("value", ["x-y", "a-b+c@d", "1-2 3", "lesson-01", "a b", ""])
def test_a_dash_inside_a_word_is_fine(value):
    assert rules.check_var_value("V", value) == value


@pytest.mark.parametrize("name", sorted(rules.ENVIRONMENT_VARS) + [
    "LD_PRELOAD", "LD_AUDIT", "BASH_FUNC_x", "GIT_SSH_COMMAND", "GIT_CONFIG_KEY_0",
    "GIT_CONFIG_VALUE_0", "GIT_CONFIG_PARAMETERS", "GIT_TRACE", "PYTHONPATH", "PYTHONUSERBASE",
    "PYTHONWARNINGS", "PYTHONSTARTUP", "PYTHONHOME", "npm_config_script_shell",
    "PIP_INDEX_URL", "UV_INDEX_URL", "CARGO_BUILD_RUSTC_WRAPPER", "LUA_INIT", "LUA_INIT_5_4"])
def test_it_always_refuses_variables_that_change_the_recipes_environment(name):
    """make exports command-line variables to the recipes: PATH= or LD_PRELOAD= there picks
    the programs and code they run."""
    with pytest.raises(rules.RuleError) as err:
        rules.check_var_name(name)
    assert "exports it to the recipes" in str(err.value)


@pytest.mark.parametrize("name", ["NODE_ENV", "GIT_SHA", "GIT_TAG", "GIT_BRANCH", "PYTHON",
                                  "PYTHON_VERSION", "RUBY_VERSION", "JAVA_HOME_HINT", "CC",
                                  "PERL_VERSION", "GO_VERSION"])
def test_a_makefiles_own_variables_that_look_like_those_are_allowed(name):
    """Names a makefile commonly has itself (NODE_ENV=production, GIT_SHA, PYTHON=python3)
    must stay possible: schedules and docker:// `vars=` naming them are checked at start."""
    assert rules.check_var_name(name) == name


def test_builds_get_the_environment_without_maketriggers_secrets():
    env = {"HOME": "/h", "R_HOME": "/r", "WORKER_VARS": "V", "TRIGGER_WORKER_TOKEN": "s1",
           "TRIGGER_WORKER_TOKEN_FILE": "/run/t", "TRIGGER_API_TOKEN": "s2",
           "TRIGGER_GITHUB_SECRET": "s3", "TRIGGER_GITLAB_TOKEN": "s4"}
    assert rules.build_environ(env, LC_ALL="C") == {
        "HOME": "/h", "R_HOME": "/r", "WORKER_VARS": "V", "LC_ALL": "C"}


def test_builds_do_not_get_what_a_make_that_started_the_worker_passed_on():
    """A worker started from a make recipe (`make -n serve`) inherits that make's MAKEFLAGS:
    every build would be a dry run that succeeds. An operator's own MAKEFLAGS stays."""
    parent = {"HOME": "/h", "MAKELEVEL": "1", "MAKEFLAGS": "n", "MFLAGS": "-n",
              "MAKEOVERRIDES": "${-*-command-variables-*-}", "MAKE_TERMOUT": "/dev/pts/0",
              "GNUMAKEFLAGS": "--no-print-directory"}
    assert rules.build_environ(parent) == {"HOME": "/h", "GNUMAKEFLAGS": "--no-print-directory"}
    assert rules.build_environ({"HOME": "/h", "MAKEFLAGS": "-j4"}) == {
        "HOME": "/h", "MAKEFLAGS": "-j4"}


def test_a_worker_started_by_a_dry_run_make_still_runs_its_builds(tmp_path, monkeypatch):
    from worker.runner import Runner

    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "Makefile").write_text("bad:\n\t@echo about to fail; exit 3\n")
    monkeypatch.setenv("MAKEFLAGS", "n")
    monkeypatch.setenv("MAKELEVEL", "1")
    run = Runner(str(ws), str(tmp_path / "s")).start("1", "bad", {}, None)
    assert run.done.wait(10)
    assert run.state.value == "failed" and run.exit_code == 2


def _fake_make(folder) -> str:
    folder.mkdir()
    make = folder / "make"
    make.write_text("#!/bin/sh\n")
    make.chmod(0o755)
    return str(make)


def test_make_is_found_once_in_the_builds_path(tmp_path):
    """Each build then execs make at once, not each PATH entry in turn."""
    first, second = _fake_make(tmp_path / "a"), _fake_make(tmp_path / "b")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert rules.make_program({"PATH": f"{empty}:{tmp_path / 'a'}:{tmp_path / 'b'}"}) == first
    assert rules.make_program({"PATH": str(tmp_path / "b")}) == second
    assert rules.make_program({"PATH": str(empty)}) == "make"  # looked up again at each start


@pytest.mark.parametrize("path", [".:{bin}", "{bin}::/bin", "relative/bin:{bin}"])
def test_a_relative_path_entry_leaves_make_to_be_found_at_each_start(tmp_path, path):
    """Such an entry means a folder of the build's own (its cwd), not the worker's."""
    _fake_make(tmp_path / "bin")
    assert rules.make_program({"PATH": path.format(bin=tmp_path / "bin")}) == "make"


@pytest.mark.parametrize("check,rule", [
    (lambda: rules.check_target_syntax("ok\ud800"), "target must not contain lone surrogates"),
    (lambda: rules.check_var_value("V", "a\udcff"), "value of V must not contain lone surrogates"),
    (lambda: rules.make_argv("/ws", "ok", {"V": "\ud800"}), "lone surrogates"),
], ids=["target", "value", "argv"])
def test_it_rejects_text_that_utf_8_cannot_encode(check, rule):
    """A JSON \\ud800 escape decodes to a lone surrogate, which no argv or database takes."""
    with pytest.raises(rules.RuleError) as err:
        check()
    assert rule in str(err.value)


@pytest.mark.parametrize("text,high,expected", [
    ("0", 10, 0), ("10", 10, 10), ("007", 10, 7), (str(2**63 - 1), 2**63 - 1, 2**63 - 1),
    ("11", 10, None), (str(2**63), 2**63 - 1, None), ("9" * 23, 2**63 - 1, None),
    ("1" * 5000, 2**63 - 1, None),  # int() refuses more than 4300 digits
    ("\u00b2", 10, None), ("\u0663", 10, None), ("\uff11", 10, None),  # digits, but not ASCII
    ("", 10, None), ("-1", 10, None), ("+1", 10, None), (" 1", 10, None), ("1_0", 100, None),
])
def test_a_natural_number_is_ascii_digits_up_to_a_bound(text, high, expected):
    assert rules.parse_natural(text, high) == expected


def test_only_listed_variables_are_allowed():
    rules.check_vars_allowed({"A": "1"}, ["A", "B"])
    with pytest.raises(rules.RuleError, match="not listed in WORKER_VARS"):
        rules.check_vars_allowed({"C": "1"}, ["A"])
    with pytest.raises(rules.RuleError, match="WORKER_VARS is empty"):
        rules.check_vars_allowed({"A": "1"}, [])


def test_target_globs_allow_only_matching_names():
    assert rules.target_allowed("html", [])
    assert rules.target_allowed("lesson-md", ["lesson-*", "html"])
    assert not rules.target_allowed("clean", ["lesson-*", "html"])


def test_the_argv_ends_options_before_the_target():
    argv = rules.make_argv("/ws", "html", {"LANG": "en"})
    assert argv == ["make", "-C", "/ws", "LANG=en", "--", "html"]


SAFE_VALUE = set(string.ascii_letters + string.digits + "é²") | rules.VALUE_PUNCTUATION


@given(st.text(max_size=60), st.dictionaries(st.text(max_size=12), st.text(max_size=40),
                                                max_size=4))
def test_nothing_outside_the_rules_ever_reaches_makes_argv(target, variables):
    try:
        argv = rules.make_argv("/ws", target, variables)
    except rules.RuleError:
        return
    assert argv[:3] == ["make", "-C", "/ws"] and argv[-2] == "--"
    assert argv[-1] == target and not target.startswith(("-", "."))
    assert not set(target) & set("=$`'\";|&%\0") and not any(c.isspace() for c in target)
    for arg in argv[3:-2]:
        name, _, value = arg.partition("=")
        assert rules.VAR_NAME_RE.fullmatch(name)
        assert name not in rules.REFUSED_VARS and not name.startswith("MAKE")
        assert not rules._changes_the_environment(name)
        assert all(c.isalnum() or c in rules.VALUE_PUNCTUATION for c in value)
        assert not any(word.startswith(("-", "+", "@")) for word in value.split())


@given(st.text(alphabet=st.sampled_from(sorted(SAFE_VALUE)), max_size=50).filter(
    lambda v: not any(word.startswith(("-", "+", "@")) for word in v.split())))
def test_safe_values_pass_unchanged(value):
    assert rules.check_var_value("V", value) == value


WORDS_MAKEFILE = """\
SHELL := /bin/bash
words:
\t@for w in $(V); do printf '%s\\0' "$$w"; done
"""


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(sorted(SAFE_VALUE | set("-\\{}#*~="))), max_size=30))
def test_an_accepted_value_reaches_a_recipe_as_its_own_words(value):
    """What make and bash make of an accepted value pasted unquoted into a recipe, as most
    recipes use them: the words the value shows, none of them an option."""
    try:
        argv = rules.make_argv(WORDS_DIR, "words", {"V": value})
    except rules.RuleError:
        return
    out = subprocess.run([argv[0], "--no-print-directory", *argv[1:]],
                         env={"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"},
                         capture_output=True, check=True)
    words = [w.decode() for w in out.stdout.split(b"\0")[:-1]]
    assert words == value.split() and not any(w.startswith(("-", "+", "@")) for w in words)


WORDS_DIR = tempfile.mkdtemp(prefix="mt-words-")
with open(os.path.join(WORDS_DIR, "Makefile"), "w") as _f:
    _f.write(WORDS_MAKEFILE)


def test_the_largest_valid_run_request_fits_the_worker_body_limit():
    """The controller sends ASCII JSON: a value of astral characters is 12 bytes a character."""
    value = "\U00020000" * rules.MAX_VALUE_LEN  # an astral letter (a CJK ideograph)
    rules.check_var_value("V", value)
    variables = {f"VARIABLE_{i}": value for i in range(rules.MAX_VARS)}
    body = json.dumps({"id": "j" * 40, "target": "t" * rules.MAX_TARGET_LEN, "vars": variables,
                       "timeout": 1e9, "follow": True})
    assert len(body.encode()) < rules.MAX_BODY


@pytest.mark.parametrize("data,expected", [
    (b'{"a": 1}', {"a": 1}),
    ('{"a": "\u00e9"}', {"a": "\u00e9"}),
    (b"[1]", None),
    (b'"text"', None),
    (b"{", None),
    (b"", None),
    (b'{"a": "\xff"}', None),  # not UTF-8
    (b"[" * 100_000 + b"]" * 100_000, None),  # RecursionError inside json
])
def test_json_object(data, expected):
    assert rules.json_object(data) == expected


@pytest.mark.parametrize("header,ok", [
    ("Bearer t0k", True), ("bearer t0k", True), ("BEARER   t0k", True), ("Bearer T0K", False),
    ("Bearer t0", False), ("Bearer t0kk", False), ("Bearer", False), ("Bearer ", False),
    ("Basic t0k", False), ("t0k", False), ("", False), ("Bearer t0k ", False),
    ("Bearer\tt0k", False)])
def test_a_bearer_token_is_matched_with_any_case_of_the_scheme_only(header, ok):
    assert rules.bearer_matches(header, "t0k") is ok
