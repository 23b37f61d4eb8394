"""The controller's gunicorn worker class: worker/gthread_linger.py's, except that a worker told
to stop (SIGTERM: `docker stop`, passed on by gunicorn's master) while it is still loading the
app exits at once. gunicorn's own handler only marks it as stopping, so a controller waiting for
its database (db_lock: a predecessor still finishing) went on waiting, then opened and migrated
the database and started dispatching in the middle of its shutdown."""

from __future__ import annotations

import sys

from worker.gthread_linger import LingeringThreadWorker


class ControllerWorker(LingeringThreadWorker):
    _loading = False

    def load_wsgi(self):
        self._loading = True
        try:
            super().load_wsgi()
        finally:
            self._loading = False

    def handle_exit(self, sig, frame):
        if self._loading:  # (leaving a transaction of the migration rolls it back)
            sys.exit(0)
        super().handle_exit(sig, frame)
