"""`trigger-server`: serve the controller app under gunicorn with the package's own config."""

from __future__ import annotations

import argparse
import os
import sys

from . import config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="trigger-server", description=__doc__)
    parser.add_argument("--bind", default=os.environ.get("TRIGGER_BIND") or "0.0.0.0:8080",
                        help="HOST:PORT to listen on (default %(default)s)")
    args, extra = parser.parse_known_args(argv)
    try:
        config.load()  # fail here, readably, rather than in a gunicorn worker that won't boot
    except config.ConfigError as exc:
        sys.exit(f"trigger-server: {exc}")
    conf = os.path.join(os.path.dirname(__file__), "gunicorn_conf.py")
    os.execv(sys.executable, [sys.executable, "-m", "gunicorn", "--config", conf,
                              "--bind", args.bind, *extra, "trigger_server:serving_app()"])
