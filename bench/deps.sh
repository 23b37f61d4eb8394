#!/usr/bin/env bash
# What `make bench` needs besides the project itself: hey and webhook (Debian packages), the
# Python packages of bench/requirements.txt, and a Docker engine (scripts/ci-docker.sh).
# Idempotent: installs only what is missing. Needs root (or sudo) for apt.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v hey >/dev/null 2>&1 || missing+=(hey)
command -v webhook >/dev/null 2>&1 || missing+=(webhook)
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench: installing ${missing[*]}" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e . -r bench/requirements.txt
scripts/ci-docker.sh
