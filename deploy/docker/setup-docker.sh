#!/usr/bin/env bash
# Makes a Docker daemon available on this machine so nats-server nodes can run as containers
# (nodes/cli/nats-containers.ts). Idempotent: installs docker.io only when dockerd is missing and
# starts dockerd only when `docker info` fails.
#
# Why these dockerd flags: the build/CI machines have no bridge networking or iptables to spare;
# every container runs with `--network host` and all traffic stays on 127.0.0.1, so dockerd
# needs no bridge, no iptables rules and no masquerading.
set -euo pipefail

LOG=/tmp/dockerd.log
PIDFILE=/tmp/sluice-dockerd.pid
WAIT_SECONDS=60

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
die() { echo "[setup-docker] ERROR: $*" >&2; exit 1; }

# `docker info` needs the daemon socket; the client may live in /usr/local/bin or /usr/bin.
docker_ok() { command -v docker >/dev/null 2>&1 && as_root docker info >/dev/null 2>&1; }
# True when PID is a live (not zombie) dockerd, or the sudo that runs it. `kill -0` alone is not
# enough: it succeeds on zombies and on unrelated processes that reused the pid.
daemon_alive() {
  local pid=$1 stat comm
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [ "$(echo "${stat##*) }" | cut -d' ' -f1)" != "Z" ] && [[ "$comm" == dockerd || "$comm" == sudo ]]
}

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
  echo "[setup-docker] installing docker.io with apt-get"
  as_root apt-get update -qq || die "apt-get update failed"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null \
    || die "apt-get install docker.io failed"
  command -v dockerd >/dev/null 2>&1 || die "docker.io installed but dockerd is still not on PATH"
fi

# docker-compose runs the stack in deploy/compose (its integration test); Debian's 1.29 is enough.
if ! command -v docker-compose >/dev/null 2>&1; then
  echo "[setup-docker] installing docker-compose with apt-get"
  as_root apt-get update -qq || die "apt-get update failed"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null \
    || die "apt-get install docker-compose failed"
fi

if docker_ok; then
  echo "[setup-docker] docker daemon already running"
  exit 0
fi

# A pid file from an earlier run whose daemon is still alive (but not answering yet): wait for it
# instead of starting a second dockerd on the same socket.
started=0
if [ -s "$PIDFILE" ] && daemon_alive "$(cat "$PIDFILE")"; then
  echo "[setup-docker] dockerd (pid $(cat "$PIDFILE")) is starting; waiting for it"
else
  echo "[setup-docker] starting dockerd (log: $LOG)"
  # setsid + nohup: the daemon must outlive this script and the shell that ran it. Not through the
  # as_root function: backgrounding a function forks a subshell, and $! would be its pid.
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" setsid nohup "$(command -v dockerd)" --bridge=none --iptables=false --ip-masq=false \
    >>"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  started=1
fi

for _ in $(seq 1 "$WAIT_SECONDS"); do
  if docker_ok; then
    # Under sudo, $! was sudo's pid: record the daemon's own pid (it writes /var/run/docker.pid).
    if [ "$started" -eq 1 ] && [ -r /var/run/docker.pid ]; then cp /var/run/docker.pid "$PIDFILE"; fi
    echo "[setup-docker] docker daemon ready (dockerd pid $(cat "$PIDFILE" 2>/dev/null || echo '?'))"
    exit 0
  fi
  if ! daemon_alive "$(cat "$PIDFILE")"; then
    tail -n 20 "$LOG" >&2 || true
    die "dockerd exited during startup; see $LOG"
  fi
  sleep 1
done
tail -n 20 "$LOG" >&2 || true
die "docker daemon did not answer 'docker info' within ${WAIT_SECONDS}s; see $LOG"
