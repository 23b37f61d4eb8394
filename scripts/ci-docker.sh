#!/usr/bin/env bash
# Make a Docker engine reachable on this machine, for `make images` and `make e2e`.
#
# Idempotent: installs Debian's docker.io, docker-compose (Compose v1), debootstrap (for the
# stand-in base image when no registry is reachable) and curl only if missing, starts dockerd in the
# background only if no engine answers, then waits until one does. Needs root (or sudo).
#
#   scripts/ci-docker.sh            # install if needed, start dockerd, wait
#   DOCKERD_LOG=/tmp/d.log scripts/ci-docker.sh
set -euo pipefail

DOCKERD_LOG=${DOCKERD_LOG:-/tmp/dockerd.log}
WAIT_SECONDS=${DOCKER_WAIT_SECONDS:-60}
# Debian's client matches Debian's engine; a newer client earlier on PATH is used only if it
# can talk to the engine (checked below).
DOCKER=${DOCKER:-docker}

say() { echo "ci-docker: $*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

engine_answers() {
    "$DOCKER" info >/dev/null 2>&1
}

install_packages() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    command -v curl >/dev/null 2>&1 || missing+=(curl)  # the e2e tests use it as a user would
    if [ ${#missing[@]} -eq 0 ]; then
        return
    fi
    say "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

start_dockerd() {
    say "starting dockerd (log: $DOCKERD_LOG)"
    # setsid: dockerd must not belong to the caller's process group or terminal.
    as_root setsid dockerd >"$DOCKERD_LOG" 2>&1 < /dev/null &
}

wait_for_engine() {
    local waited=0
    until engine_answers; do
        if [ "$waited" -ge "$WAIT_SECONDS" ]; then
            say "no Docker engine answered within ${WAIT_SECONDS}s; last lines of $DOCKERD_LOG:"
            tail -n 20 "$DOCKERD_LOG" >&2 || true
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

pick_client() {
    # A client newer than the engine usually negotiates down; if it cannot, use Debian's.
    if ! "$DOCKER" version >/dev/null 2>&1 && [ -x /usr/bin/docker ]; then
        say "'$DOCKER' cannot talk to the engine; use /usr/bin/docker (export DOCKER=/usr/bin/docker)"
        DOCKER=/usr/bin/docker
        engine_answers
    fi
}

install_packages
if engine_answers; then
    pick_client || true
    say "engine already running"
else
    if pgrep -x dockerd >/dev/null 2>&1; then
        say "dockerd is starting; waiting"
    else
        start_dockerd
    fi
    wait_for_engine
    pick_client
fi
"$DOCKER" version --format 'ci-docker: client {{.Client.Version}}, engine {{.Server.Version}}' >&2
