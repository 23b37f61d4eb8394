#!/bin/sh
# Start the controller, secure with no setup: unless a worker token is given
# (TRIGGER_WORKER_TOKEN or TRIGGER_WORKER_TOKEN_FILE) or WORKER_INSECURE=1, make one at the first
# start, in the volume shared with the workers (who read it via TRIGGER_WORKER_TOKEN_FILE), and
# keep it across restarts.
#
# Runs as the image's user (uid 10001). The token file is 0644: the workers run as whoever owns
# the workspace, a uid known only at their start, and only the controller and the workers mount
# that volume.
set -eu

say() { echo "maketrigger-server: $*" >&2; }

# Compose passes every documented setting, empty when not set: empty means "the default".
for var in $(env | sed -n 's/^\(\(TRIGGER\|WORKER\)_[A-Z0-9_]*\)=$/\1/p'); do
    unset "$var"
done

token_file=${MAKETRIGGER_GENERATED_TOKEN:-/run/maketrigger/worker_token}

insecure() {
    case "${WORKER_INSECURE:-}" in 1 | true | True | TRUE | yes | on) return 0 ;; esac
    return 1
}

if [ -z "${TRIGGER_WORKER_TOKEN:-}" ] && [ -z "${TRIGGER_WORKER_TOKEN_FILE:-}" ] && ! insecure; then
    if [ ! -s "$token_file" ]; then
        dir=$(dirname "$token_file")
        if [ ! -w "$dir" ]; then
            say "cannot write the worker token into $dir as uid $(id -u):" \
                "mount a volume there owned by $(id -u), or set TRIGGER_WORKER_TOKEN(_FILE)"
            exit 1
        fi
        umask 022
        python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >"$token_file.tmp.$$"
        mv "$token_file.tmp.$$" "$token_file"
        say "generated a worker token in $token_file"
    fi
    export TRIGGER_WORKER_TOKEN_FILE="$token_file"
fi

db=${TRIGGER_DB:-/data/maketrigger.db}
if [ ! -w "$(dirname "$db")" ]; then
    say "cannot write $(dirname "$db") (TRIGGER_DB) as uid $(id -u): chown it to $(id -u)"
    exit 1
fi

exec "$@"
