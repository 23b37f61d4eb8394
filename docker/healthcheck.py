"""Docker HEALTHCHECK probe: GET a /healthz URL, exit 0 on HTTP 200 and 1 otherwise.

    healthcheck.py URL                   the controller (its /healthz needs no token)
    healthcheck.py URL --worker-token    a worker: send TRIGGER_WORKER_TOKEN, or the content of
                                         TRIGGER_WORKER_TOKEN_FILE, as a bearer token

Standard library only: slim images have no curl.
"""

import os
import sys
import urllib.request


def worker_token() -> str:
    token = os.environ.get("TRIGGER_WORKER_TOKEN", "")
    path = os.environ.get("TRIGGER_WORKER_TOKEN_FILE", "")
    if not token and path:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    return token


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    request = urllib.request.Request(argv[1])
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        if "--worker-token" in argv[2:]:
            token = worker_token()
            if token:
                request.add_header("Authorization", f"Bearer {token}")
        with opener.open(request, timeout=4) as response:
            status = response.status
    except Exception as exc:  # any failure is "unhealthy"; say which in `docker inspect`
        print(f"unhealthy: {exc}")
        return 1
    print(f"HTTP {status}")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
