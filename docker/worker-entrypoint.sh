#!/bin/sh
# Start the worker as the owner of the mounted workspace, so that whatever make writes there
# belongs to the host user, with no setup.
#
# The container starts as root only for this: read the owner and group of WORKER_WORKDIR (or
# take WORKER_UID / WORKER_GID), give that user the worker's state folder and a home, then drop
# root for good (setpriv) and exec the command, normally `trigger-worker`.
#
# A workspace owned by root means the host user is root: the builds then run as root too (with a
# warning), since no other user could write there. Set WORKER_UID/WORKER_GID to choose another
# user, who must then be able to write the workspace.
# Started as non-root already (`docker run --user`, compose `user:`), it only runs the command.
set -eu

say() { echo "maketrigger-worker: $*" >&2; }

# Compose passes every documented setting, empty when not set: empty means "the default".
for var in $(env | sed -n 's/^\(\(TRIGGER\|WORKER\)_[A-Z0-9_]*\)=$/\1/p'); do
    unset "$var"
done

workdir=${WORKER_WORKDIR:-/workspace}
state=${WORKER_STATE_DIR:-/var/lib/maketrigger-worker}

# The token: the controller writes it at its first start (compose starts workers after it).
# With WORKER_INSECURE=1 it generates none (and ignores one left from before): so does the worker.
generated_token=${MAKETRIGGER_GENERATED_TOKEN:-/run/maketrigger/worker_token}
wait_for_token_file() {
    file=${TRIGGER_WORKER_TOKEN_FILE:-}
    [ -z "${TRIGGER_WORKER_TOKEN:-}" ] && [ -n "$file" ] || return 0
    case "${WORKER_INSECURE:-}" in
        1 | true | True | TRUE | yes | on)
            [ "$file" != "$generated_token" ] || unset TRIGGER_WORKER_TOKEN_FILE
            return 0 ;;
    esac
    waited=0
    while [ ! -s "$file" ] && [ "$waited" -lt "${WORKER_TOKEN_WAIT:-30}" ]; do
        [ "$waited" -eq 0 ] && say "waiting for the worker token in $file"
        sleep 1
        waited=$((waited + 1))
    done
}

# A passwd entry (and so a name and a home) for a uid the image does not know: git, ssh and R
# look the current user up. The container's own /etc/passwd only; the host's is untouched.
ensure_user() {
    uid=$1 gid=$2
    if ! getent group "$gid" >/dev/null; then
        name=maketrigger
        getent group "$name" >/dev/null && name=maketrigger-$gid
        echo "$name:x:$gid:" >>/etc/group
    fi
    if ! getent passwd "$uid" >/dev/null; then
        name=maketrigger
        getent passwd "$name" >/dev/null && name=maketrigger-$uid
        echo "$name:x:$uid:$gid:maketrigger worker:$state/home:/bin/sh" >>/etc/passwd
    fi
}

wait_for_token_file

if [ "$(id -u)" != 0 ]; then
    exec "$@"
fi

if [ ! -d "$workdir" ]; then
    say "WORKER_WORKDIR $workdir is not a directory: mount your project there"
    exit 1
fi
uid=${WORKER_UID:-$(stat -c %u "$workdir")}
gid=${WORKER_GID:-$(stat -c %g "$workdir")}
why="the owner of $workdir"
[ -z "${WORKER_UID:-}${WORKER_GID:-}" ] || why="WORKER_UID/WORKER_GID"

mkdir -p "$state"
if [ "$uid" = 0 ]; then
    if [ -n "${WORKER_UID:-}" ]; then
        say "WORKER_UID=0: builds run as root"
    else
        say "WARNING: $workdir belongs to root, so builds run as root;" \
            "set WORKER_UID/WORKER_GID to run them as another user"
    fi
    export HOME=${HOME:-/root}
    exec "$@"
fi

ensure_user "$uid" "$gid"
entry=$(getent passwd "$uid")
home=$(echo "$entry" | cut -d: -f6)
user=$(echo "$entry" | cut -d: -f1)
# The user's own home if the image has one for it (rocker's rstudio); never anyone else's.
if [ -z "$home" ] || [ ! -d "$home" ] || [ "$(stat -c %u "$home")" != "$uid" ]; then
    home=$state/home
    mkdir -p "$home"
fi
chown -R "$uid:$gid" "$state"
export HOME="$home" USER="$user" LOGNAME="$user"
say "builds run as $user (uid $uid, gid $gid): $why"
exec setpriv --reuid="$uid" --regid="$gid" --init-groups "$@"
