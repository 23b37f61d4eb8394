"""The worker's settings: defaults, then environment variables, then explicit overrides."""

from __future__ import annotations

import hashlib
import math
import os
import stat
import tempfile

from . import rules, watch


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the worker must not start."""


def _list(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()]


def _bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def finite(value: str) -> float:
    """A number of seconds (or bytes): float() also takes 'nan' and 'inf', which every
    comparison with a limit gets wrong and JSON cannot carry."""
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return number


# name: (environment variable, parser, default)
SETTINGS = {
    "WORKDIR": ("WORKER_WORKDIR", str, "/workspace"),
    "STATE_DIR": ("WORKER_STATE_DIR", str, None),
    "LOCK": ("WORKER_LOCK", str, "workspace"),
    "TARGETS": ("WORKER_TARGETS", _list, []),
    "VARS": ("WORKER_VARS", _list, []),
    "JOB_TIMEOUT": ("WORKER_JOB_TIMEOUT", finite, 3600.0),
    "KILL_GRACE": ("WORKER_KILL_GRACE", finite, 10.0),
    "KEEP_RUNS": ("WORKER_KEEP_RUNS", int, 100),
    "KEEP_LOG_BYTES": ("WORKER_KEEP_LOG_BYTES", int, 1 << 30),
    "TOKEN": ("TRIGGER_WORKER_TOKEN", str, ""),
    "INSECURE": ("WORKER_INSECURE", _bool, False),
    "WATCH": ("TRIGGER_WATCH", str, ""),
    "WATCH_DEBOUNCE": ("WORKER_WATCH_DEBOUNCE", finite, 2.0),
    "WATCH_POLLING": ("WORKER_WATCH_POLLING", _bool, False),
    "THREADS": ("WORKER_THREADS", int, 16),
    "LOG_LEVEL": ("WORKER_LOG_LEVEL", str, "info"),
}
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def log_level_problem(var: str, value: str) -> str | None:
    if value.lower() not in LOG_LEVELS:
        return f"{var} must be one of {', '.join(LOG_LEVELS)}, not {value!r}"
    return None


def read_secret(environ, name: str) -> str:
    """`NAME` or, Docker-secrets style, the stripped content of the file named by `NAME_FILE`."""
    value = environ.get(name, "")
    path = environ.get(f"{name}_FILE", "")
    if not value and path:
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: cannot read {path}: {exc}") from exc
        if not value:  # a token that failed to be made must not pass for "no token"
            raise ConfigError(f"{name}_FILE: {path} is empty")
    return value


def load(overrides: dict | None = None, environ=None) -> dict:
    """Every setting, parsed and checked; raises ConfigError naming the bad variable."""
    environ = os.environ if environ is None else environ
    cfg: dict = {}
    for key, (var, parse, default) in SETTINGS.items():
        raw = read_secret(environ, var) if key == "TOKEN" else environ.get(var)
        try:
            cfg[key] = parse(raw) if raw not in (None, "") else default
        except ValueError as exc:
            raise ConfigError(f"{var}={raw!r}: {exc}") from None
    cfg.update(overrides or {})
    if cfg["LOCK"] not in ("workspace", "target"):
        raise ConfigError(f"WORKER_LOCK must be 'workspace' or 'target', not {cfg['LOCK']!r}")
    if not os.path.isdir(cfg["WORKDIR"]):
        raise ConfigError(f"WORKER_WORKDIR {cfg['WORKDIR']!r} is not a directory")
    cfg["WORKDIR"] = os.path.realpath(cfg["WORKDIR"])
    if not cfg["TOKEN"] and not cfg["INSECURE"]:
        raise ConfigError("no worker token: set TRIGGER_WORKER_TOKEN (or TRIGGER_WORKER_TOKEN_FILE)"
                          ", or WORKER_INSECURE=1 to run without one")
    if cfg["JOB_TIMEOUT"] <= 0 or cfg["KILL_GRACE"] < 0:
        raise ConfigError("WORKER_JOB_TIMEOUT must be > 0 and WORKER_KILL_GRACE >= 0")
    if cfg["KEEP_RUNS"] < 1 or cfg["THREADS"] < 1 or cfg["WATCH_DEBOUNCE"] < 0 or \
            cfg["KEEP_LOG_BYTES"] < 0:
        raise ConfigError("WORKER_KEEP_RUNS and WORKER_THREADS must be >= 1, "
                          "WORKER_WATCH_DEBOUNCE and WORKER_KEEP_LOG_BYTES >= 0")
    problem = log_level_problem("WORKER_LOG_LEVEL", cfg["LOG_LEVEL"])
    if problem:
        raise ConfigError(problem)
    for name in cfg["VARS"]:  # a name no request could ever pass is a typo, said at once
        try:
            rules.check_var_name(name)
        except rules.RuleError as exc:
            raise ConfigError(f"WORKER_VARS: {exc}") from None
    try:
        cfg["WATCH_RULES"] = watch.parse(cfg["WATCH"])
    except watch.WatchError as exc:
        raise ConfigError(str(exc)) from None
    if not cfg["STATE_DIR"]:
        cfg["STATE_DIR"] = default_state_dir(cfg["WORKDIR"])
    return cfg


def default_state_dir(workdir: str) -> str:
    """The state folder when WORKER_STATE_DIR is not set: in the shared temporary folder, where
    anyone can guess its name, so it is made private (0700) and one that is not this user's
    own private folder is refused. Whoever could write in it could plant run records that make
    the worker signal processes at its start (`Runner.recover`), or forge a build's result."""
    digest = hashlib.sha256(workdir.encode()).hexdigest()[:12]
    uid = os.geteuid()
    path = os.path.join(tempfile.gettempdir(), f"maketrigger-worker-{uid}-{digest}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot make the state folder {path}: {exc}; set WORKER_STATE_DIR"
                          ) from None
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_mode & 0o077:
        raise ConfigError(
            f"{path} (the default WORKER_STATE_DIR) is not a folder that only this user (uid "
            f"{uid}) can use: someone else may have made it. Remove it, or set WORKER_STATE_DIR")
    return path
