"""The controller's gunicorn worker class: worker/gthread_linger.py's, except that a worker told
to stop (SIGTERM: `docker stop`, passed on by gunicorn's master) before it has booted (loading
the app, waiting for its database, migrating it, then starting the dispatcher, the scheduler
and the rest in post_worker_init) exits at once. gunicorn's own handler only marks it as
stopping, so a controller waiting for its database (db_lock: a predecessor still finishing)
went on waiting, then migrated the database, started dispatching and fired `@reboot`
schedules in the middle of its shutdown."""

from __future__ import annotations

import sys

from worker.gthread_linger import LingeringThreadWorker


class ControllerWorker(LingeringThreadWorker):
    def handle_exit(self, sig, frame):
        if not self.booted:  # (a transaction left this way is rolled back: Store._tx)
            sys.exit(0)
        super().handle_exit(sig, frame)
