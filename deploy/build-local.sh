#!/bin/sh
# Build the CPU image on a host without a registry or a package index in the build:
#   1. the base image from Debian's packages (deploy/make-base.sh: debootstrap + podman import, cached);
#   2. a wheelhouse made here by the host's pip (its index, proxy and certificates), so the
#      build installs with --no-index;
#   3. podman build with settings that work on plain hosts and CI runners: rootful, runc,
#      cgroupfs, host network, a file events logger, and ulimits set explicitly to what this
#      machine allows (podman's defaults can exceed them).
# Usage: deploy/build-local.sh [IMAGE]     (default localhost/sip-tts:cpu; PYTHON=... picks the pip)
set -eu
IMAGE=${1:-localhost/sip-tts:cpu}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
BASE=${BASE:-localhost/sip-tts-base:bookworm}
NOFILE=$(ulimit -Hn)
[ "$NOFILE" = unlimited ] && NOFILE=1048576
NPROC=$(cat /proc/sys/kernel/pid_max)
PODMAN="podman --runtime runc --cgroup-manager cgroupfs --events-backend file"

PODMAN="$PODMAN" sh "$ROOT/deploy/make-base.sh" "$BASE"
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/deploy/wheels"
cp "$ROOT/pyproject.toml" "$ctx/"
for pkg in "$ROOT"/*/__init__.py; do  # every top-level package (tests and benchmarks are left out below)
    d=$(dirname "$pkg"); case $(basename "$d") in tests|sip_tests|benchmarks) continue;; esac
    cp -r "$d" "$ctx/"
done
cp "$ROOT/deploy/Containerfile" "$ROOT/deploy/server.yaml" "$ROOT/deploy/healthcheck.py" "$ctx/deploy/"
find "$ctx" -name __pycache__ -prune -exec rm -rf {} +
"$PY" -m pip wheel -q --disable-pip-version-check -w "$ctx/deploy/wheels" "$ctx" "setuptools>=68" wheel \
    "async-timeout>=4.0.3"  # redis needs it on Python < 3.11.3 (bookworm: 3.11.2), the host may not
$PODMAN build --network host --ulimit "nofile=$NOFILE:$NOFILE" --ulimit "nproc=$NPROC:$NPROC" \
    --format docker --build-arg BASE="$BASE" --build-arg PIP_ARGS=--no-index \
    -f "$ctx/deploy/Containerfile" -t "$IMAGE" "$ctx"
