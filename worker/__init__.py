"""maketrigger's worker: the agent in a build container that runs `make <target>` on request."""

from __future__ import annotations

import logging

from flask import Flask

from . import config as config_module
from . import rules
from .makefile import TargetCatalog
from .runner import Runner
from .unread_body import closing_after_unread_bodies
from .watch import Watcher


def create_app(config: dict | None = None) -> Flask:
    """The worker app for one workspace. Settings: defaults, then WORKER_*, then `config`."""
    cfg = config_module.load(config)
    app = Flask(__name__, static_folder=None)
    app.config.update(cfg)
    app.config["MAX_CONTENT_LENGTH"] = rules.MAX_BODY
    app.json.sort_keys = False
    runner = Runner(cfg["WORKDIR"], cfg["STATE_DIR"], lock_mode=cfg["LOCK"],
                    job_timeout=cfg["JOB_TIMEOUT"], kill_grace=cfg["KILL_GRACE"],
                    keep_runs=cfg["KEEP_RUNS"], keep_log_bytes=cfg["KEEP_LOG_BYTES"])
    runner.recover()
    app.extensions["runner"] = runner
    app.extensions["catalog"] = TargetCatalog(cfg["WORKDIR"], cfg["LOCK"])
    # started by the gunicorn hook, after the fork
    app.extensions["watcher"] = Watcher(cfg["WORKDIR"], cfg["WATCH_RULES"], runner,
                                        debounce=cfg["WATCH_DEBOUNCE"],
                                        polling=cfg["WATCH_POLLING"])
    if not cfg["TOKEN"]:
        logging.getLogger(__name__).warning("WORKER_INSECURE=1: serving without a token")
    from .api import bp
    app.register_blueprint(bp)
    app.wsgi_app = closing_after_unread_bodies(app.wsgi_app)  # see there
    return app
