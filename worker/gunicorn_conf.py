"""gunicorn settings for the worker: exactly one process, since the running build is in-process
state. Plain settings read from the environment; hooks are plain functions."""

import logging
import os
import signal
import threading

from worker.serving import NO_FORWARDING, setup_logging, tune_interpreter

bind = os.environ.get("WORKER_BIND") or "0.0.0.0:8000"
workers = 1  # never more: the runs and their waiter threads live in this one process
worker_class = "worker.gthread_linger.LingeringThreadWorker"  # gthread, see there
threads = int(os.environ.get("WORKER_THREADS") or "16")  # each running build streams its log
timeout = 30
keepalive = 75  # longer than the controller's health interval, so kept-alive links get reused
# Long enough for running builds to get SIGTERM, end within their kill grace, and be reported.
graceful_timeout = int(float(os.environ.get("WORKER_KILL_GRACE") or "10")) + 10
control_socket_disable = True
# No peer sets the request's path or scheme with headers (worker/serving.py):
forwarded_allow_ips, forwarder_headers, secure_scheme_headers, http_protocols = NO_FORWARDING
accesslog = os.environ.get("WORKER_ACCESS_LOG") or None
loglevel = os.environ.get("WORKER_LOG_LEVEL") or "info"
setup_logging(loglevel)


def post_worker_init(worker):
    """Start watching the workspace (TRIGGER_WATCH). On SIGTERM (a `docker stop`), cancel
    running builds before gunicorn stops serving, so the controller still hears how they
    ended. SIGINT and SIGQUIT (Ctrl-C, gunicorn's quick stop: the master passes them on as
    SIGQUIT) do the same, then stop the same way: gunicorn's own handler for them exits at once,
    which left the builds running with no one to enforce their time limit."""
    tune_interpreter()
    worker.wsgi.extensions["watcher"].start()
    runner = worker.wsgi.extensions["runner"]
    gunicorn_handler = signal.getsignal(signal.SIGTERM)  # graceful: stops serving, then exits

    def finish_then_exit():
        try:
            runner.shutdown("worker shutdown")
        except Exception:
            logging.getLogger(__name__).exception("stopping the running builds failed")
        finally:
            gunicorn_handler(signal.SIGTERM, None)

    def on_sigterm(signum, frame):  # (and SIGINT, SIGQUIT)
        threading.Thread(target=finish_then_exit, name="shutdown", daemon=True).start()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, on_sigterm)
