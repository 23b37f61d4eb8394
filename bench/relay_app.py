"""The architecture's floor, for the `relay` row: two bare Flask apps under gunicorn (gthread as
worker/gthread_linger.py changes it, one process: the settings maketrigger's servers use), the
front one relaying each POST over a keep-alive `http.client` connection to the back one, which runs
make synchronously and answers with its output. What maketrigger does on the same path, minus
everything it does besides: no validation, no token, no history, no log stream, no queue. The front
one's `/accept` answers the same POST with 202 and does nothing else: one hop of Flask under
gunicorn, the ceiling of triggers accepted per second on this stack.

    gunicorn 'bench.relay_app:back("/path/to/workspace")'
    gunicorn 'bench.relay_app:front("127.0.0.1:PORT")'
"""

from __future__ import annotations

import http.client
import json
import subprocess
import threading

from flask import Flask, Response, request


def back(workspace: str) -> Flask:
    app = Flask("relay-back")

    @app.post("/run")
    def run():
        body = request.get_json()
        argv = ["make", "-C", workspace,
                *(f"{k}={v}" for k, v in body.get("vars", {}).items()), body["target"]]
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              check=False)
        return {"exit_code": done.returncode, "log": done.stdout.decode(errors="replace")}

    return app


def front(back_address: str) -> Flask:
    app = Flask("relay-front")
    host, port = back_address.rsplit(":", 1)
    local = threading.local()  # one keep-alive connection per serving thread

    def relay(body: bytes) -> tuple[int, bytes]:
        for attempt in (1, 2):  # once more on a connection the back end closed meanwhile
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = http.client.HTTPConnection(host, int(port), timeout=60)
            try:
                conn.request("POST", "/run", body, {"Content-Type": "application/json"})
                answer = conn.getresponse()
                return answer.status, answer.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @app.post("/accept")
    def accept():
        """The ceiling of accepted triggers per second on this stack: parse the same POST and
        answer 202 with a small JSON object, nothing else."""
        body = request.get_json()
        return {"target": body["target"], "state": "queued", "coalesced": True}, 202

    @app.post("/jobs")
    def jobs():
        body = request.get_json()
        status, answer = relay(json.dumps({"target": body["target"],
                                           "vars": body.get("vars", {})}).encode())
        return Response(answer, status=status, mimetype="application/json")

    return app
