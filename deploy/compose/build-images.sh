#!/usr/bin/env bash
# Builds every image deploy/compose/docker-compose.yml runs, with the local Docker engine and
# nothing pulled (no registry is reachable here): each is FROM scratch with binaries from this
# machine and the shared libraries they need (ldd), an empty /data (mode 1777, for the named
# volume) and /etc/passwd with user 10001, the uid the stack runs as.
#   sluice:local             deploy/docker/build-image.sh (the node image, every role)
#   sluice-nats:local        nats-server (deploy/nats/bin/nats-server, else the one on PATH)
#   sluice-postgres:local    Debian's PostgreSQL (/usr/lib/postgresql/<newest>), initdb on first start
#   sluice-prometheus:local  Debian's prometheus (on PATH, else `apt-get download prometheus`,
#                            unpacked into ~/.cache/sluice: no service is installed)
# Grafana is not in Debian's archive: its service (profile `grafana`) pulls grafana/grafana-oss.
# An image is rebuilt only when its inputs changed (label sluice.inputs; FORCE=1 rebuilds all).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
log() { echo "[build-images] $*"; }

bash "$root/deploy/docker/build-image.sh"

# build_scratch TAG STAGE ENTRYPOINT-JSON: STAGE/rootfs becomes the image.
build_scratch() {
  local tag=$1 stage=$2 entrypoint=$3 inputs current
  mkdir -p "$stage/rootfs/etc" "$stage/rootfs/tmp" "$stage/rootfs/data"
  chmod 1777 "$stage/rootfs/tmp" "$stage/rootfs/data"
  printf 'root:x:0:0:root:/:/sbin/nologin\nsluice:x:10001:10001:sluice:/data:/sbin/nologin\n' >"$stage/rootfs/etc/passwd"
  printf 'root:x:0:\nsluice:x:10001:\n' >"$stage/rootfs/etc/group"
  printf 'FROM scratch\nCOPY rootfs/ /\nUSER 10001:10001\nENTRYPOINT %s\n' "$entrypoint" >"$stage/Dockerfile"
  inputs=$( (cd "$stage" && find . -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-32)
  current=$(docker image inspect --format '{{index .Config.Labels "sluice.inputs"}}' "$tag" 2>/dev/null || true)
  if [ "$current" = "$inputs" ] && [ "${FORCE:-0}" != 1 ]; then
    log "$tag is up to date"
    return
  fi
  DOCKER_BUILDKIT=0 docker build --quiet --label "sluice.inputs=$inputs" --tag "$tag" "$stage" >/dev/null 2>&1 \
    || DOCKER_BUILDKIT=0 docker build --label "sluice.inputs=$inputs" --tag "$tag" "$stage"
  log "built $tag ($(($(docker image inspect --format '{{.Size}}' "$tag") / 1000000)) MB)"
}

# copy_with_libs ROOTFS FILE...: each file at its own path, plus what ldd says it loads.
copy_with_libs() {
  local rootfs=$1 f lib
  shift
  for f in "$@"; do
    mkdir -p "$rootfs$(dirname "$f")"
    cp -L "$f" "$rootfs$f"
    ldd "$f" 2>/dev/null | sed -n 's#.*[[:space:]]\(/[^[:space:]]*\) (0x[0-9a-f]*)$#\1#p' | while read -r lib; do
      [ -e "$rootfs$lib" ] && continue
      mkdir -p "$rootfs$(dirname "$lib")"
      cp -L "$lib" "$rootfs$lib"
    done
  done
}

stages=$(mktemp -d /tmp/sluice-images-XXXXXX)
trap 'rm -rf "$stages"' EXIT

# --- NATS
nats=$root/deploy/nats/bin/nats-server
[ -x "$nats" ] || nats=$(command -v nats-server || echo /usr/sbin/nats-server)
[ -x "$nats" ] || { echo "no nats-server: bash deploy/nats/install-nats-server.sh" >&2; exit 1; }
mkdir -p "$stages/nats/rootfs"
copy_with_libs "$stages/nats/rootfs" "$(readlink -f "$nats")"
mv "$stages/nats/rootfs$(readlink -f "$nats")" "$stages/nats/rootfs/nats-server"
build_scratch "${SLUICE_NATS_IMAGE:-sluice-nats:local}" "$stages/nats" '["/nats-server"]'

# --- PostgreSQL: the server, initdb (it runs `postgres -V` through /bin/sh), the extension
# libraries initdb loads, the share dir (catalog, timezone sets), the time zone database.
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$pgbin" ] || { echo "no PostgreSQL: apt-get install -y postgresql" >&2; exit 1; }
pgroot=$(dirname "$pgbin")
major=$(basename "$pgroot")
pg=$stages/postgres/rootfs
mkdir -p "$pg/bin" "$pg/usr/share/postgresql" "$pg/usr/share/zoneinfo"
# Not llvmjit.so: it pulls in libLLVM (~100 MB) for JIT compilation, which the config turns off.
mapfile -t pglibs < <(ls "$pgroot"/lib/*.so | grep -v '/llvmjit')
copy_with_libs "$pg" "$pgbin/postgres" "$pgbin/initdb" "${pglibs[@]}" "$(readlink -f /bin/sh)"
ln -sf "$(readlink -f /bin/sh)" "$pg/bin/sh"
cp -a "/usr/share/postgresql/$major" "$pg/usr/share/postgresql/"
cp -a /usr/share/zoneinfo/. "$pg/usr/share/zoneinfo/"
sed "s#@PGBIN@#$pgbin#g" "$here/postgres-entrypoint.sh" >"$pg/entrypoint.sh"
chmod 755 "$pg/entrypoint.sh"
build_scratch "${SLUICE_POSTGRES_IMAGE:-sluice-postgres:local}" "$stages/postgres" '["/entrypoint.sh"]'

# --- Prometheus
prom=$(command -v prometheus || true)
if [ -z "$prom" ]; then
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/sluice/prometheus
  if [ ! -x "$cache/usr/bin/prometheus" ]; then
    log "downloading Debian's prometheus package into $cache"
    mkdir -p "$cache" && rm -f "$cache"/*.deb
    (cd "$cache" && apt-get download prometheus 2>/dev/null >/dev/null && dpkg-deb -x prometheus_*.deb . && rm -f prometheus_*.deb)
  fi
  prom=$cache/usr/bin/prometheus
fi
mkdir -p "$stages/prometheus/rootfs"
copy_with_libs "$stages/prometheus/rootfs" "$(readlink -f "$prom")"
mv "$stages/prometheus/rootfs$(readlink -f "$prom")" "$stages/prometheus/rootfs/prometheus"
build_scratch "${SLUICE_PROMETHEUS_IMAGE:-sluice-prometheus:local}" "$stages/prometheus" '["/prometheus"]'
