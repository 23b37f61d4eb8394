"""The controller's gunicorn worker class: told to stop before it has booted, it exits at
once; once booted, it stops as gunicorn's gthread worker does (finishing its requests)."""

import signal

import pytest

from trigger_server.gunicorn_worker import ControllerWorker
from worker.gthread_linger import LingeringThreadWorker


def _worker(booted: bool) -> ControllerWorker:
    worker = ControllerWorker.__new__(ControllerWorker)  # (the handler needs no more)
    worker.booted = booted
    return worker


def test_told_to_stop_while_it_boots_it_exits_at_once():
    with pytest.raises(SystemExit) as exited:
        _worker(booted=False).handle_exit(signal.SIGTERM, None)
    assert exited.value.code == 0


def test_once_booted_it_stops_as_gunicorn_does(monkeypatch):
    handled = []
    monkeypatch.setattr(LingeringThreadWorker, "handle_exit",
                        lambda self, sig, frame: handled.append(sig))
    _worker(booted=True).handle_exit(signal.SIGTERM, None)
    assert handled == [signal.SIGTERM]
