"""The controller's settings: defaults, then TRIGGER_* environment variables, then overrides."""

from __future__ import annotations

import os

from worker.config import finite, log_level_problem

from . import schedules, workers


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the controller must not start."""


def _list(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()]


def _bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


# name: (environment variable, parser, default). Secrets also come from VAR_FILE.
SETTINGS = {
    "WORKERS": ("TRIGGER_WORKERS", _list, []),
    "DB": ("TRIGGER_DB", str, "maketrigger.db"),
    "DB_BUSY_TIMEOUT": ("TRIGGER_DB_BUSY_TIMEOUT", finite, 10.0),
    "WORKER_TOKEN": ("TRIGGER_WORKER_TOKEN", str, ""),
    "API_TOKEN": ("TRIGGER_API_TOKEN", str, ""),
    "INSECURE": ("WORKER_INSECURE", _bool, False),
    "LOST_AFTER": ("TRIGGER_LOST_AFTER", finite, 30.0),
    "RESOLVE_INTERVAL": ("TRIGGER_RESOLVE_INTERVAL", finite, 2.0),
    "HEALTH_INTERVAL": ("TRIGGER_HEALTH_INTERVAL", finite, 2.0),
    "MAX_WAIT": ("TRIGGER_MAX_WAIT", finite, 3600.0),
    "MAX_WAITERS": ("TRIGGER_MAX_WAITERS", int, 0),
    "THREADS": ("TRIGGER_THREADS", int, 16),
    "MAX_BODY": ("TRIGGER_MAX_BODY", int, 64 * 1024),
    "MAX_HOOK_BODY": ("TRIGGER_MAX_HOOK_BODY", int, 10 * 1024 * 1024),
    "MAX_LOG_BYTES": ("TRIGGER_MAX_LOG_BYTES", int, 100 * 1024 * 1024),
    "KEEP_JOBS": ("TRIGGER_KEEP_JOBS", int, 0),
    "LOG_LEVEL": ("TRIGGER_LOG_LEVEL", str, "info"),
    # schedules (trigger_server/schedules.py)
    "SCHEDULE": ("TRIGGER_SCHEDULE", str, ""),
    "SCHEDULE_FILE": ("TRIGGER_SCHEDULE_FILE", str, ""),
    "SCHEDULE_CATCHUP": ("TRIGGER_SCHEDULE_CATCHUP", str, "once"),
    "TZ": ("TZ", str, "UTC"),
    # notifications (trigger_server/notify.py)
    "NOTIFY_URL": ("TRIGGER_NOTIFY_URL", str, ""),
    "NOTIFY_ON": ("TRIGGER_NOTIFY_ON", str, "failure"),
    # git-host webhooks (trigger_server/hooks.py); each endpoint is off without its secret
    "GITHUB_SECRET": ("TRIGGER_GITHUB_SECRET", str, ""),
    "GITHUB_BRANCH": ("TRIGGER_GITHUB_BRANCH", str, ""),
    "GITHUB_TARGET": ("TRIGGER_GITHUB_TARGET", str, ""),
    "GITLAB_TOKEN": ("TRIGGER_GITLAB_TOKEN", str, ""),
    "GITLAB_BRANCH": ("TRIGGER_GITLAB_BRANCH", str, ""),
    "GITLAB_TARGET": ("TRIGGER_GITLAB_TARGET", str, ""),
}
SECRETS = ("WORKER_TOKEN", "API_TOKEN", "GITHUB_SECRET", "GITLAB_TOKEN")
# The least each number may be, and whether that least itself is allowed.
LOWEST = {
    "DB_BUSY_TIMEOUT": (0, True), "LOST_AFTER": (0, False), "RESOLVE_INTERVAL": (0, False),
    "HEALTH_INTERVAL": (0, False), "MAX_WAIT": (0, True), "MAX_WAITERS": (0, True),
    "THREADS": (1, True), "MAX_BODY": (1024, True), "MAX_HOOK_BODY": (1024, True),
    "MAX_LOG_BYTES": (0, True), "KEEP_JOBS": (0, True),
}


def _secret(environ, var: str) -> str | None:
    value = environ.get(var)
    path = environ.get(f"{var}_FILE")
    if not value and path:
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read().strip()
        except OSError as exc:
            raise ConfigError(f"{var}_FILE: cannot read {path}: {exc}") from exc
        if not value:  # a secret that failed to be made must not turn its check off
            raise ConfigError(f"{var}_FILE: {path} is empty")
    return value


def load(overrides: dict | None = None, environ=None) -> dict:
    """Every setting, parsed and checked; raises ConfigError naming the bad variable."""
    environ = os.environ if environ is None else environ
    cfg: dict = {}
    for key, (var, parse, default) in SETTINGS.items():
        raw = _secret(environ, var) if key in SECRETS else environ.get(var)
        try:
            cfg[key] = parse(raw) if raw not in (None, "") else default
        except ValueError as exc:
            raise ConfigError(f"{var}={raw!r}: {exc}") from None
    cfg.update(overrides or {})
    for key, (low, inclusive) in LOWEST.items():
        if cfg[key] < low or cfg[key] == low and not inclusive:
            raise ConfigError(f"{SETTINGS[key][0]} must be {'>=' if inclusive else '>'} {low}, "
                              f"not {cfg[key]!r}")
    problem = log_level_problem(SETTINGS["LOG_LEVEL"][0], cfg["LOG_LEVEL"])
    if problem:
        raise ConfigError(problem)
    for entry in cfg["WORKERS"]:
        _check_worker_entry(entry)
    if not cfg["WORKER_TOKEN"] and not cfg["INSECURE"]:
        raise ConfigError("no worker token: set TRIGGER_WORKER_TOKEN (or TRIGGER_WORKER_TOKEN_FILE)"
                          ", or WORKER_INSECURE=1 to talk to workers without one")
    try:
        cfg["SCHEDULES"] = schedules.load(cfg["SCHEDULE"], cfg["SCHEDULE_FILE"])
        cfg["TIMEZONE"] = schedules.timezone(cfg["TZ"])
    except schedules.ScheduleError as exc:
        raise ConfigError(str(exc)) from None
    if cfg["NOTIFY_ON"] not in ("failure", "always", "change"):
        raise ConfigError("TRIGGER_NOTIFY_ON must be 'failure', 'always' or 'change'")
    if cfg["NOTIFY_URL"] and not cfg["NOTIFY_URL"].startswith(("http://", "https://")):
        raise ConfigError("TRIGGER_NOTIFY_URL must be an http(s) URL")
    if cfg["SCHEDULE_CATCHUP"] not in ("once", "none"):
        raise ConfigError("TRIGGER_SCHEDULE_CATCHUP must be 'once' or 'none'")
    if not cfg["MAX_WAITERS"]:
        cfg["MAX_WAITERS"] = max(1, cfg["THREADS"] - 4)
    if not cfg["WORKERS"] and "WORKERS" not in (overrides or {}):  # (tests may mean none)
        raise ConfigError("TRIGGER_WORKERS is not set: name the workers that run the builds, "
                          "e.g. http://worker:8000 (a comma-separated list); without one, "
                          "every job would wait in the queue for ever")
    return cfg


def _check_worker_entry(entry: str) -> None:
    """A TRIGGER_WORKERS entry must at least be well formed; whether it answers is for later."""
    try:
        workers.check_entry(entry)
    except ValueError as exc:
        raise ConfigError(f"TRIGGER_WORKERS: {exc}") from None
    except ImportError as exc:  # docker:// without the Docker SDK installed
        raise ConfigError(f"TRIGGER_WORKERS: {entry!r} needs the Docker SDK, which is not "
                          f"installed ({exc}): pip install '.[docker]' in maketrigger's "
                          "source folder, or pip install docker (the controller's image has "
                          "it)") from None
