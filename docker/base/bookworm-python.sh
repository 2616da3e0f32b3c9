#!/usr/bin/env bash
# A local Debian bookworm + Python 3.11 base image, for machines that cannot pull public images
# (tests and CI here). `reprozoo image build --flavour cpu --base reprozoo-base:bookworm-py311`.
#
#   docker/base/bookworm-python.sh [TAG]        (root; needs debootstrap and a Docker engine)
#
# The rootfs tarball is kept in $REPROZOO_BASE_CACHE (default ~/.cache/reprozoo/base) so that a
# wiped Docker engine re-imports it in seconds instead of re-running debootstrap (~3 min).
set -euo pipefail
TAG=${1:-reprozoo-base:bookworm-py311}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${REPROZOO_BASE_CACHE:-$HOME/.cache/reprozoo/base}
TARBALL="$CACHE/bookworm-py311.tar"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock" && flock 9  # one debootstrap at a time (two test workers may ask at once)
if [[ ! -s "$TARBALL" ]]; then
    ROOT=$(mktemp -d)
    trap 'rm -rf "$ROOT"' EXIT
    # minbase + what the Dockerfile needs: python3 with venv/ensurepip, CA roots for pip when the
    # build does reach an index (a wheelhouse build does not).
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOT" "$MIRROR"
    # Nothing of the host's may travel: apt lists and caches, logs, machine id.
    rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/apt/archives/*.deb \
           "$ROOT"/var/log/* "$ROOT"/tmp/* "$ROOT"/root/.cache
    : > "$ROOT/etc/machine-id"
    tar --numeric-owner --sort=name -C "$ROOT" -cf "$TARBALL.partial" .
    mv "$TARBALL.partial" "$TARBALL"
fi
docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    "$TARBALL" "$TAG"
