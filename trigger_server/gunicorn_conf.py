"""gunicorn settings for the controller: one process (gthread, with worker/gthread_linger.py's
change and trigger_server/gunicorn_worker.py's), because the dispatcher and the jobs it follows
are in-process state. The dispatcher thread starts after the fork."""

import logging
import os
import sys
import threading
import time

from worker.serving import NO_FORWARDING, setup_logging, tune_interpreter

bind = os.environ.get("TRIGGER_BIND") or "0.0.0.0:8080"
workers = 1  # never more: one dispatcher per database
worker_class = "trigger_server.gunicorn_worker.ControllerWorker"  # gthread, see there
threads = int(os.environ.get("TRIGGER_THREADS") or "16")
timeout = 30
graceful_timeout = 10
keepalive = 5
control_socket_disable = True
# No peer sets the request's path or scheme with headers (worker/serving.py):
forwarded_allow_ips, forwarder_headers, secure_scheme_headers, http_protocols = NO_FORWARDING
accesslog = os.environ.get("TRIGGER_ACCESS_LOG") or None
loglevel = os.environ.get("TRIGGER_LOG_LEVEL") or "info"
setup_logging(loglevel)


def post_worker_init(worker):
    """Start the dispatcher, the scheduler, the checkpointer, the history's pruner (with
    TRIGGER_KEEP_JOBS) and (if anything is to be sent) the notifier in the serving process
    (threads do not survive a fork). The app holds its database already (serving_app)."""
    if worker.wsgi.extensions.get("db_lock") is None:  # gunicorn run by hand on create_app()
        logging.getLogger("trigger_server").error(
            "cannot serve: the app was made without its database lock; serve "
            "trigger_server:serving_app() (what trigger-server does)")
        sys.exit(3)  # gunicorn's "failed to boot": the master stops too, not retrying
    tune_interpreter()
    _warn_if_open(worker.cfg.bind, worker.wsgi.config["API_TOKEN"])
    worker.wsgi.extensions["checkpointer"].start()
    worker.wsgi.extensions["notifier"].start_if_pending()
    worker.wsgi.extensions["dispatcher"].start()
    worker.wsgi.extensions["scheduler"].start()
    worker.wsgi.extensions["pruner"].start()
    # Last: what it stops must have started (a stop before a start would not hold).
    threading.Thread(target=_answer_waits_on_stop, args=(worker,), name="stop-watch",
                     daemon=True).start()


def _warn_if_open(binds: list[str], api_token: str) -> None:
    """Without TRIGGER_API_TOKEN anyone who reaches the API queues builds: fine on loopback
    (or behind compose's 127.0.0.1-only port), worth a word anywhere else."""
    if api_token:
        return
    for bind in binds:
        host = bind.rpartition(":")[0].strip("[]") if ":" in bind else bind
        if bind.startswith(("unix:", "fd://")) or host in ("127.0.0.1", "::1", "localhost"):
            continue
        logging.getLogger("trigger_server").warning(
            "no TRIGGER_API_TOKEN: anyone who can reach %s can queue and cancel builds; set "
            "one unless only trusted peers (or a 127.0.0.1-only published port) reach it", bind)


def _answer_waits_on_stop(worker):
    """Once gunicorn stops this process (SIGTERM, or its master gone), requests waiting for a
    job's end answer with the job as it is, log follows end, and nothing new is started, fired
    or sent: gunicorn waits for open requests (graceful_timeout, then cuts them off without an
    answer), and a process whose master was killed outlives its requests, holding the port and
    the database. (gunicorn's worker_exit hook runs only after its graceful period, too late
    for this.) What is queued
    stays queued in the database for the next controller; what runs goes on in its worker."""
    while worker.alive and worker.ppid == os.getppid():
        time.sleep(0.5)
    extensions = worker.wsgi.extensions
    extensions["dispatcher"].close_waits()
    for name in ("scheduler", "pruner", "dispatcher", "notifier", "checkpointer"):
        extensions[name].stop()
