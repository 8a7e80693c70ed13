#!/bin/sh
# A minimal Debian bookworm base image for hosts without a registry:
#   debootstrap --variant=minbase bookworm -> tarball -> podman import.
# The tarball is kept in $SIP_TTS_IMAGE_CACHE (default ~/.cache/sip-tts) so it is made once per machine.
# Usage: deploy/make-base.sh [IMAGE]   (default localhost/sip-tts-base:bookworm)
set -eu
IMAGE=${1:-localhost/sip-tts-base:bookworm}
CACHE=${SIP_TTS_IMAGE_CACHE:-$HOME/.cache/sip-tts}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
TARBALL=$CACHE/bookworm-minbase.tar
PODMAN=${PODMAN:-podman}

if $PODMAN image exists "$IMAGE"; then
    echo "base image $IMAGE: present"
    exit 0
fi
mkdir -p "$CACHE"
if [ ! -s "$TARBALL" ]; then
    root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    echo "debootstrap --variant=minbase bookworm from $MIRROR"
    debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -20 "$CACHE/debootstrap.log"; exit 1; }
    # apt caches and lists are not part of an image
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$TARBALL.tmp" --numeric-owner .
    mv "$TARBALL.tmp" "$TARBALL"
fi
$PODMAN import --change 'CMD ["/bin/bash"]' "$TARBALL" "$IMAGE" >/dev/null
echo "base image $IMAGE: imported from $TARBALL"
