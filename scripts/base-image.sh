#!/usr/bin/env bash
# The base image the maketrigger images are built on, when no registry can be reached.
#
#   scripts/base-image.sh build [TAG]     debootstrap a minimal Debian bookworm with python3,
#                                         python3-venv and make, and `docker import` it as TAG
#                                         (default maketrigger-base:bookworm); kept if present
#                                         unless FORCE=1
#   scripts/base-image.sh resolve IMAGE   print IMAGE if it is present or can be pulled,
#                                         otherwise build the stand-in and print its tag
#
# The stand-in is a plain Debian: what the Dockerfiles must also work on (the worker is meant to
# be layered on a user's own toolchain image). Needs root and debootstrap
# (scripts/ci-docker.sh installs it).
set -euo pipefail

DOCKER=${DOCKER:-docker}
STANDIN_IMAGE=${STANDIN_IMAGE:-maketrigger-base:bookworm}
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

say() { echo "base-image: $*" >&2; }

have_image() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

build() {
    local tag=${1:-$STANDIN_IMAGE}
    if have_image "$tag" && [ "${FORCE:-0}" != 1 ]; then
        say "$tag already exists (FORCE=1 rebuilds it)"
        return
    fi
    local root
    root=$(mktemp -d /tmp/maketrigger-base.XXXXXX)
    # shellcheck disable=SC2064
    trap "rm -rf '$root'" EXIT
    say "debootstrap $DEBIAN_SUITE into $root (about a minute)"
    debootstrap --variant=minbase --include=python3,python3-venv,make,ca-certificates \
        "$DEBIAN_SUITE" "$root" "$DEBIAN_MIRROR" >"$root.log" 2>&1 || {
        tail -n 20 "$root.log" >&2
        exit 1
    }
    rm -f "$root.log"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    # The mirror debootstrap used, so `apt-get update` works inside the image.
    echo "deb $DEBIAN_MIRROR $DEBIAN_SUITE main" >"$root/etc/apt/sources.list"
    tar -C "$root" -c . | "$DOCKER" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' \
        --message "maketrigger stand-in base: debootstrap $DEBIAN_SUITE minbase" \
        - "$tag" >/dev/null
    say "built $tag"
}

resolve() {
    local image=$1
    if have_image "$image"; then
        echo "$image"
    elif "$DOCKER" pull -q "$image" >/dev/null 2>&1; then
        echo "$image"
    else
        say "cannot pull $image (no registry reachable?); using the stand-in $STANDIN_IMAGE"
        build "$STANDIN_IMAGE"
        echo "$STANDIN_IMAGE"
    fi
}

case "${1:-}" in
    build) build "${2:-}" ;;
    resolve) resolve "${2:?usage: $0 resolve IMAGE}" ;;
    *) echo "usage: $0 build [TAG] | resolve IMAGE" >&2; exit 2 ;;
esac
