"""maketrigger's controller: takes triggers, queues jobs, hands them to workers, keeps history."""

from __future__ import annotations

import logging
import os
import sys

from flask import Flask

from worker.unread_body import closing_after_unread_bodies

from . import config as config_module
from . import db_lock
from .api import bp
from .checkpoint import Checkpointer
from .dispatch import Dispatcher
from .history import Pruner
from .hooks import bp as hooks_bp
from .joined import JoinedAnswers
from .log_tail import LogTail
from .notify import Notifier
from .schedules import Scheduler
from .store import Store
from .waiting import WaitSlots
from .workers import WorkerClient, WorkerPool


def serving_app() -> Flask:
    """The app as `trigger-server` serves it: holding its database (db_lock) from before it
    opens it, since opening it adds a newer version's columns (Store._migrate), which must not
    happen under a controller that serves from it (a second one started by mistake, or a newer
    one started before the old one stopped). Another controller's database: exit status 3,
    gunicorn's "failed to boot", which stops its master too rather than retrying."""
    try:
        return create_app(hold_database=True)
    except db_lock.DatabaseInUse as exc:
        logging.getLogger(__name__).error("cannot serve: %s", exc)
        sys.exit(3)


def create_app(config: dict | None = None, hold_database: bool = False) -> Flask:
    """The controller app. Settings: defaults, then TRIGGER_* variables, then `config`.
    `hold_database`: lock the database for this process first (serving_app).

    The dispatcher, the scheduler, the checkpointer, the notifier and the history's pruner
    are created here but
    started by the gunicorn hook (or a test), never at import time: threads do not survive
    gunicorn's fork.
    """
    cfg = config_module.load(config)
    held = db_lock.hold(cfg["DB"]) if hold_database else None
    try:
        return _create_app(cfg, held)
    except BaseException:
        if held is not None:
            os.close(held)
        raise


def _create_app(cfg: dict, held: int | None) -> Flask:
    app = Flask(__name__, static_folder=None)
    app.config.update(cfg)
    app.config["MAX_CONTENT_LENGTH"] = cfg["MAX_BODY"]
    app.json.sort_keys = False
    store = Store(cfg["DB"], max_log_bytes=cfg["MAX_LOG_BYTES"],
                  busy_timeout=cfg["DB_BUSY_TIMEOUT"])
    checkpointer = Checkpointer(cfg["DB"], busy_timeout=cfg["DB_BUSY_TIMEOUT"])
    log_tail = LogTail()

    def log_written(job_id: int, offset: int, data: bytes) -> None:
        checkpointer.wrote(len(data))
        log_tail.stored(job_id, offset, data)

    store.log_written = log_written
    client = WorkerClient(cfg["WORKER_TOKEN"])
    pool = WorkerPool(cfg["WORKERS"], client, resolve_interval=cfg["RESOLVE_INTERVAL"],
                      health_interval=cfg["HEALTH_INTERVAL"])
    dispatcher = Dispatcher(store, pool, client, lost_after=cfg["LOST_AFTER"])
    notifier = Notifier(store, cfg["NOTIFY_URL"], cfg["NOTIFY_ON"])
    dispatcher.ended = notifier.job_ended
    app.extensions.update(
        store=store, pool=pool, dispatcher=dispatcher, checkpointer=checkpointer,
        log_tail=log_tail, notifier=notifier,
        scheduler=Scheduler(cfg["SCHEDULES"], store, dispatcher, cfg["TIMEZONE"],
                            cfg["SCHEDULE_CATCHUP"], pool),
        wait_slots=WaitSlots(cfg["MAX_WAITERS"]), pruner=Pruner(store, cfg["KEEP_JOBS"]),
        joined=JoinedAnswers(), db_lock=held)
    app.register_blueprint(bp)
    app.register_blueprint(hooks_bp)
    app.wsgi_app = closing_after_unread_bodies(app.wsgi_app)  # see there
    return app
