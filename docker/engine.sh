#!/usr/bin/env bash
# A Docker engine for tests and CI on a bare Debian machine (root): `docker/engine.sh start`.
#
# Does nothing when an engine already answers. Otherwise installs Debian's docker.io (plus the
# registry and debootstrap the container tests use) when dockerd is missing, starts dockerd in
# the background and waits for it. Exits non-zero, saying why, when no engine can start (not root,
# no apt, no cgroups...; or REPROZOO_NO_ENGINE_START set); the container tests then skip with that reason.
set -uo pipefail
LOG=${REPROZOO_DOCKERD_LOG:-/var/log/reprozoo-dockerd.log}
# The engine the Docker SDK will use: $DOCKER_HOST when it names a unix socket, else the default.
case "${DOCKER_HOST:-}" in unix://*) SOCK=${DOCKER_HOST#unix://} ;; *) SOCK=/var/run/docker.sock ;; esac

answers() { docker -H "unix://$SOCK" info >/dev/null 2>&1 || python3 - "$SOCK" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(3); s.connect(sys.argv[1])
s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n"); sys.exit(0 if b"200 OK" in s.recv(200) else 1)
PY
}

case "${1:-start}" in
start)
    if [[ -S "$SOCK" ]] && answers; then echo "docker engine: already running ($SOCK)"; exit 0; fi
    if [[ -n "${REPROZOO_NO_ENGINE_START:-}" ]]; then echo "docker engine: none answers at $SOCK (REPROZOO_NO_ENGINE_START is set)" >&2; exit 1; fi
    if [[ $(id -u) -ne 0 ]]; then echo "docker engine: none answers at $SOCK and starting one needs root" >&2; exit 1; fi
    missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v docker-registry >/dev/null || missing+=(docker-registry)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    if ((${#missing[@]})); then
        if ! command -v apt-get >/dev/null; then echo "docker engine: ${missing[*]} missing and no apt-get" >&2; exit 1; fi
        echo "docker engine: installing ${missing[*]} (Debian packages)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >/tmp/reprozoo-apt.log 2>&1 \
            || { echo "docker engine: apt-get install ${missing[*]} failed (see /tmp/reprozoo-apt.log)" >&2; exit 1; }
    fi
    echo "docker engine: starting dockerd (log $LOG)"
    # setsid: the engine outlives this script; CI ends it with the machine.
    setsid dockerd --host "unix://$SOCK" >"$LOG" 2>&1 < /dev/null &
    for _ in $(seq 60); do
        if answers; then echo "docker engine: ready"; exit 0; fi
        sleep 1
    done
    echo "docker engine: dockerd did not answer within 60 s; last log lines:" >&2
    tail -5 "$LOG" >&2
    exit 1
    ;;
*)
    echo "usage: $0 start" >&2; exit 2 ;;
esac
