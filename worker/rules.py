"""What may reach make's command line.

`make` runs commands, so every target name and variable that a request carries is checked
here before it goes anywhere near an argv. The worker enforces all of it; the controller imports
this module for its early syntax checks, so the rules live in exactly one place.
"""

from __future__ import annotations

import fnmatch
import hmac
import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping

# Characters that never appear in a target name we accept. `=` matters even after `--`: make
# reads NAME=VALUE as a variable assignment wherever it stands on the command line.
_TARGET_FORBIDDEN = {
    "=": "'=' (make reads NAME=VALUE as a variable assignment)",
    "$": "'$' (make expands variables and functions)",
    "`": "backticks",
    "'": "quotes",
    '"': "quotes",
    ";": "';'",
    "|": "'|'",
    "&": "'&'",
    "\0": "NUL",
}

VAR_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Variables that change how make runs commands or parses its own command line. A command-line
# SHELL= alone runs arbitrary programs; MAKEFLAGS= smuggles in options.
REFUSED_VARS = frozenset({
    "SHELL", "MAKEFLAGS", "MFLAGS", "MAKEFILES", "MAKE", ".SHELLFLAGS", "MAKECMDGOALS",
    "GNUMAKEFLAGS", "MAKEOVERRIDES", "VPATH", ".RECIPEPREFIX",
})

# Names make passes on to the recipes' environment, where they change what the shell and every
# program it starts do (which program a name runs, which code is loaded first): refused even
# when WORKER_VARS lists them.
ENVIRONMENT_VARS = frozenset({
    "PATH", "IFS", "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "PS4", "CDPATH", "GLOBIGNORE",
    "ZDOTDIR",
    "R_PROFILE", "R_PROFILE_USER", "R_ENVIRON", "R_ENVIRON_USER", "R_LIBS", "R_LIBS_USER",
    "R_LIBS_SITE",
    # where programs read their own settings and start-up code from (~/.Rprofile, git's
    # config with its core.fsmonitor command), and the commands programs run for a user
    "HOME", "XDG_CONFIG_HOME", "GCONV_PATH", "EDITOR", "VISUAL", "PAGER", "BROWSER",
    "SSH_ASKPASS", "DOCKER_HOST", "DOCKER_CONFIG",
    # git's commands and settings
    "GIT_ASKPASS", "GIT_EXEC_PATH", "GIT_EDITOR", "GIT_SEQUENCE_EDITOR", "GIT_PAGER",
    "GIT_EXTERNAL_DIFF", "GIT_PROXY_COMMAND", "GIT_TEMPLATE_DIR", "GIT_DIR", "GIT_WORK_TREE",
    # the interpreters' and tool chains' start-up code, module paths and package sources
    "PERL5LIB", "PERL5OPT", "PERLLIB", "PERL5DB", "PERL_MB_OPT", "PERL_MM_OPT",
    "RUBYOPT", "RUBYLIB", "RUBYSHELL", "GEM_HOME", "GEM_PATH", "BUNDLE_GEMFILE",
    "NODE_OPTIONS", "NODE_PATH", "NODE_REPL_EXTERNAL_MODULE",
    "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH",
    "GOFLAGS", "GOPROXY", "GOSUMDB", "GONOSUMDB", "GOPRIVATE", "GOINSECURE", "GOTOOLCHAIN",
    "RUSTC", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "RUSTFLAGS", "RUSTDOCFLAGS",
    "GLIBC_TUNABLES",
    # where downloads come from
    "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy",
})
_ENVIRONMENT_PREFIXES = ("LD_", "BASH_FUNC_", "GIT_CONFIG", "GIT_SSH", "GIT_TRACE",
                         "npm_config_", "NPM_CONFIG_", "PIP_", "UV_INDEX", "UV_EXTRA_INDEX",
                         "UV_DEFAULT_INDEX", "CARGO_", "LUA_INIT", "LUA_PATH", "LUA_CPATH")
# Python's own variables: PYTHON and capitals, no underscore (PYTHONPATH, PYTHONUSERBASE,
# PYTHONWARNINGS, ...); PYTHON or PYTHON_VERSION, a makefile's own, stay possible.
_PYTHON_VAR = re.compile(r"PYTHON[A-Z0-9]+")


def _changes_the_environment(name: str) -> bool:
    return (name in ENVIRONMENT_VARS or name.startswith(_ENVIRONMENT_PREFIXES)
            or _PYTHON_VAR.fullmatch(name) is not None)


# The secrets maketrigger is given, kept out of make's environment (build_environ).
_SECRET_NAME = re.compile(r"TRIGGER_\w*(TOKEN|SECRET)")

# A word of a value (values are split at whitespace by a recipe that uses them unquoted, as
# most do) that starts with '-' would be read as an option by the program it is passed to:
# `find $(DIR)` with DIR=". -exec rm {} +"; '+' and '@' are options to some (`date +FMT`,
# gcc's `@file` reads more arguments from a file).
_OPTION_WORD = re.compile(r"(?:^|\s)[-+@]")
# Besides letters and digits, the only characters a value may hold: none that a shell reads as
# quoting (\-exec is -exec once the shell has read it), expansion ({x,-rf}, *, ?, [, ~), a
# comment (#) or syntax, so a value reaches a recipe as the words it shows; and no '=', so that
# no word is an assignment to a make the recipe runs (`$(MAKE) -C docs $(FORMATS)` with
# FORMATS="html SHELL=/bin/x" would set that make's SHELL).
VALUE_PUNCTUATION = frozenset(" \t_.,:/@%+-")

_VALUE_FORBIDDEN = {
    "$": "'$' (a $(shell ...) value executes)",
    "`": "backticks",
    "'": "quotes",
    '"': "quotes",
    ";": "';'",
    "|": "'|'",
    "&": "'&'",
    "<": "'<'",
    ">": "'>'",
    "\n": "newlines",
    "\r": "newlines",
    "\0": "NUL",
}

MAX_TARGET_LEN = 200
MAX_VALUE_LEN = 4096
MAX_VARS = 64
# The largest request body the worker reads (413 above it). The largest valid POST /runs,
# MAX_VARS values of MAX_VALUE_LEN characters each sent as a \uXXXX\uXXXX pair (12 bytes; the
# controller's JSON is ASCII), is about 3.2 MB.
MAX_BODY = 8 * 1024 * 1024


class RuleError(ValueError):
    """An input that must not reach make; the message names the rule it breaks."""


def parse_natural(text: str, high: int) -> int | None:
    """The number that `text` spells in ASCII digits if it is at most `high`, else None.
    str.isdigit() alone is true for '²', which int() refuses, and int() refuses more than 4300
    digits: a number from a URL or form goes through here (both sides use it)."""
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(high)):
        return None
    value = int(digits)
    return value if value <= high else None


def json_object(data: bytes | str) -> dict | None:
    """`data` parsed as a JSON object, or None where it is not one: not JSON, not UTF-8, or
    nested too deep to parse (json raises RecursionError there, which Flask's
    get_json(silent=True) lets through as a 500). Every JSON body either side reads comes here."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return value if isinstance(value, dict) else None


def check_utf8(what: str, text: str) -> str:
    """Return `text` if UTF-8 can encode it. JSON's \\ud800 escapes decode to lone surrogates,
    which no argv, log line or database takes: refused here, not at make's start (a 500 on each
    try) or at the database's insert."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RuleError(f"{what} must not contain lone surrogates (text UTF-8 cannot encode)"
                        ) from None
    return text


def check_target_syntax(target: object) -> str:
    """Return `target` if its spelling is acceptable to pass to make, else raise RuleError."""
    if target is None:
        raise RuleError("target is required: the make target to build")
    if not isinstance(target, str):
        raise RuleError("target must be a string")
    if not target:
        raise RuleError("target must not be empty")
    if len(target) > MAX_TARGET_LEN:
        raise RuleError(f"target must be at most {MAX_TARGET_LEN} characters")
    check_utf8("target", target)
    if target.startswith("-"):
        raise RuleError("target must not start with '-' (make would read it as an option)")
    if target.startswith("."):
        raise RuleError("target must not start with '.' (special targets are not buildable)")
    if "%" in target:
        raise RuleError("target must not contain '%' (pattern rules are not targets)")
    for ch, why in _TARGET_FORBIDDEN.items():
        if ch in target:
            raise RuleError(f"target must not contain {why}")
    if any(c.isspace() for c in target):
        raise RuleError("target must not contain whitespace")
    if any(ord(c) < 32 or ord(c) == 127 for c in target):
        raise RuleError("target must not contain control characters")
    return target


def target_allowed(target: str, patterns: Iterable[str]) -> bool:
    """True if no allow-list is configured, or `target` matches one of its glob patterns."""
    patterns = [p for p in patterns if p]
    return not patterns or any(fnmatch.fnmatchcase(target, p) for p in patterns)


def check_var_name(name: object) -> str:
    """Return `name` if it is a variable name make may be given on its command line."""
    if not isinstance(name, str) or not VAR_NAME_RE.fullmatch(name):
        raise RuleError(f"variable name {name!r} must match [A-Za-z_][A-Za-z0-9_]*")
    if name in REFUSED_VARS or name.startswith((".", "MAKE")):
        raise RuleError(f"variable {name} is always refused (it changes how make runs commands)")
    if _changes_the_environment(name):
        raise RuleError(f"variable {name} is always refused (make exports it to the recipes, "
                        "where it changes what the shell and the programs they run do)")
    return name


def check_var_value(name: str, value: object) -> str:
    """Return `value` if it cannot make make execute anything, else raise RuleError."""
    if not isinstance(value, str):
        raise RuleError(f"value of {name} must be a string")
    if len(value) > MAX_VALUE_LEN:
        raise RuleError(f"value of {name} must be at most {MAX_VALUE_LEN} characters")
    check_utf8(f"value of {name}", value)
    for ch, why in _VALUE_FORBIDDEN.items():
        if ch in value:
            raise RuleError(f"value of {name} must not contain {why}")
    if any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in value):
        raise RuleError(f"value of {name} must not contain control characters")
    odd = sorted({c for c in value if not c.isalnum() and c not in VALUE_PUNCTUATION})
    if odd:
        raise RuleError(f"value of {name} must not contain {' '.join(odd)!r}: only letters, "
                        "digits, spaces and _ . , : / @ % + - (the shell of a recipe, or a "
                        "make it runs, reads the others)")
    if _OPTION_WORD.search(value):
        raise RuleError(f"value of {name} must not start a word with '-', '+' or '@' (a recipe "
                        "that passes it on would give the program an option)")
    return value


def check_vars_syntax(variables: object) -> dict[str, str]:
    """Check every name and value of a `vars` object; returns it as a plain dict."""
    if variables is None:
        return {}
    if not isinstance(variables, Mapping):
        raise RuleError("vars must be an object of NAME: VALUE strings")
    if len(variables) > MAX_VARS:
        raise RuleError(f"at most {MAX_VARS} variables are accepted")
    return {check_var_name(k): check_var_value(k, v) for k, v in variables.items()}


def check_vars_allowed(variables: Mapping[str, str], allowed: Iterable[str],
                       setting: str = "WORKER_VARS") -> None:
    """Refuse any variable whose name the worker's allow-list (`setting`) does not list."""
    allowed = set(allowed)
    for name in variables:
        if name not in allowed:
            if not allowed:
                raise RuleError(f"variable {name} refused: this worker accepts no variables "
                                f"({setting} is empty)")
            raise RuleError(f"variable {name} refused: not listed in {setting}")


# What a make puts in its recipes' environment for the makes they start. In a worker started
# by a make recipe (MAKELEVEL is set), they are that make's, not the operator's: `make -n`'s
# MAKEFLAGS=n would make every build a dry run that succeeds.
_FROM_A_PARENT_MAKE = frozenset({
    "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "MAKE_RESTARTS", "MAKE_TERMOUT",
    "MAKE_TERMERR",
})


def build_environ(environ: Mapping[str, str], **extra: str) -> dict[str, str]:
    """The environment make runs in: the agent's own, less the secrets maketrigger was given
    (the worker token above all), so that a recipe that prints its environment does not put
    them in a log any API client can read, and less what a make that started the worker
    passed on to it (an operator's own MAKEFLAGS, e.g. `-j4`, stays)."""
    inherited = _FROM_A_PARENT_MAKE if "MAKELEVEL" in environ else frozenset()
    env = {k: v for k, v in environ.items()
           if not _SECRET_NAME.match(k) and k not in inherited}
    env.update(extra)
    return env


def bearer_matches(authorization: str, token: str) -> bool:
    """Whether an Authorization header carries `token` as a Bearer credential. The scheme's
    name is case-insensitive and may be followed by more than one space (RFC 9110 11.1, 11.4);
    the token itself is compared in constant time."""
    scheme, _, credentials = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        credentials.lstrip(" ").encode(), token.encode())


def make_program(environ: Mapping[str, str]) -> str:
    """The make that `make` names in `environ`'s PATH, as an absolute path, found once, at the
    worker's start: each build then makes one execve instead of one per PATH entry before
    make's folder (0.07 ms of a 3.7 ms round trip, measured here). A make installed or removed
    later is seen at the next start. Plain `make` (looked up at each build's start) if it is
    not found now or PATH has a relative entry, which only the build's own folder resolves."""
    path = environ.get("PATH", os.defpath)
    if any(not os.path.isabs(entry) for entry in path.split(os.pathsep)):
        return "make"
    return shutil.which("make", path=path) or "make"


def make_argv(workdir: str, target: str, variables: Mapping[str, str]) -> list[str]:
    """The exact argv of a build; every part is checked again here, whatever the caller did."""
    check_target_syntax(target)
    checked = check_vars_syntax(variables)
    return ["make", "-C", workdir, *(f"{k}={v}" for k, v in checked.items()), "--", target]


def parse_assignment(text: str) -> tuple[str, str]:
    """Split a command-line `NAME=VALUE` into a checked pair (used by the CLI and schedules)."""
    name, sep, value = text.partition("=")
    if not sep:
        raise RuleError(f"{text!r} is not NAME=VALUE")
    return check_var_name(name), check_var_value(name, value)
