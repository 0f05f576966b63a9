#!/bin/sh
# Stand-in base images for machines that cannot pull from an image registry: Debian bookworm root
# file systems built from Debian's packages with debootstrap, loaded with `docker import`.
#   kd3-base:bookworm-py311  python3.11 + pip + venv (stands in for python:3.11-slim)
#   kd3-redis:bookworm       redis-server + redis-cli (stands in for redis:7.2-alpine)
# Needs root, debootstrap and a running dockerd. Images that already exist are kept
# (FORCE=1 rebuilds them). Usage: sh docker/stand-in/build-bases.sh
# HOST_CA (default: this host's /etc/ssl/certs/ca-certificates.crt) replaces the images' CA bundle,
# so that builds trust what this host trusts (here: a TLS-intercepting proxy in front of PyPI).
set -eu
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WORK=${WORK:-/var/tmp/kd3-stand-in}
mkdir -p "$WORK"

build() {  # build TAG PACKAGES CMD...
    tag=$1 packages=$2
    shift 2
    if [ -z "${FORCE:-}" ] && docker image inspect "$tag" >/dev/null 2>&1; then
        echo "== $tag exists (FORCE=1 rebuilds it)"
        return
    fi
    root="$WORK/$(echo "$tag" | tr ':/' '__')"
    rm -rf "$root"
    start=$(date +%s)
    echo "== debootstrap $tag ($packages)"
    debootstrap --variant=minbase --include="$packages" bookworm "$root" "$MIRROR" >"$root.log" 2>&1 \
        || { tail -20 "$root.log"; exit 1; }
    chroot "$root" apt-get clean
    ca=${HOST_CA-/etc/ssl/certs/ca-certificates.crt}
    if [ -n "$ca" ] && [ -f "$ca" ] && [ -d "$root/etc/ssl/certs" ]; then cp "$ca" "$root/etc/ssl/certs/ca-certificates.crt"; fi
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/usr/share/doc/* \
        "$root"/usr/share/man/*
    # python:3.11-slim has python/pip on PATH under these names
    if [ -x "$root/usr/bin/python3" ]; then
        ln -sf python3 "$root/usr/bin/python"
        [ -x "$root/usr/bin/pip3" ] && ln -sf pip3 "$root/usr/bin/pip"
        # Debian marks its python as externally managed (PEP 668); the official image does not
        rm -f "$root"/usr/lib/python3.11/EXTERNALLY-MANAGED
    fi
    tar -C "$root" -c . | docker import "$@" - "$tag" >/dev/null
    rm -rf "$root"
    echo "== $tag built in $(($(date +%s) - start)) s"
}

build kd3-base:bookworm-py311 python3.11,python3-pip,python3-venv,ca-certificates \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]'
build kd3-redis:bookworm redis-server,redis-tools \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'WORKDIR /data' --change 'CMD ["redis-server"]'
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^kd3-(base|redis):'
