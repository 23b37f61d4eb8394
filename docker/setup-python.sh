#!/bin/sh
# Create /opt/venv, the images' own Python environment, and install the apt packages given as
# arguments, in one `apt-get update && install && clean` (skipped if nothing is needed).
#
# maketrigger needs Python >= 3.11 with venv. The base image's python3 is used when it is new
# enough (python:*-slim); otherwise the newest pythonX.Y that apt offers, alongside whatever
# python3 the base has (Ubuntu 22.04, under rocker/verse:4.4, has 3.10 as python3 and 3.11 in
# universe). The venv is apart, so the toolchain's own Python is left as it was.
set -eu

new_enough() {
    "$1" -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

python=
if command -v python3 >/dev/null 2>&1 && new_enough python3; then
    python=python3
fi
packages="$*"
if [ -z "$python" ] || [ -n "$packages" ]; then
    apt-get update
    if [ -z "$python" ]; then
        for version in 3.13 3.12 3.11; do
            if apt-cache show "python$version-venv" >/dev/null 2>&1; then
                python=python$version
                packages="$packages $python $python-venv"
                break
            fi
        done
        if [ -z "$python" ]; then
            echo "setup-python: no Python >= 3.11 with venv in this image or its apt" \
                "sources; maketrigger needs one" >&2
            exit 1
        fi
    fi
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $packages
    rm -rf /var/lib/apt/lists/*
fi
"$python" -m venv /opt/venv
echo "setup-python: /opt/venv from $(command -v "$python"): $(/opt/venv/bin/python -V)"
