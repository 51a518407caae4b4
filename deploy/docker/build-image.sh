#!/usr/bin/env bash
# Builds the sluice node image (default tag sluice:local, override with SLUICE_IMAGE) with the
# local Docker engine, FROM scratch (deploy/docker/Dockerfile): no base image is pulled, so it
# works where no registry is reachable. Stages into a temporary build context:
#   rootfs/usr/bin/node            this machine's node binary
#   rootfs/<lib paths>             the shared libraries node and the native modules need (ldd)
#   rootfs/app/{dist,package.json} the compiled code (run `npm run build` first; built if missing)
#   rootfs/app/node_modules        the production dependencies only (`npm ls --omit=dev`),
#                                  copied from ./node_modules: no network, no native rebuild
#   rootfs/app/nodes/coordinator/dashboard/static  the dashboard page
#   rootfs/tmp (1777), rootfs/etc/{passwd,group} (user sluice, 10001)
# Skips the build when the image's `sluice.inputs` label matches a hash of its inputs (FORCE=1
# rebuilds). The classic builder (DOCKER_BUILDKIT=0): BuildKit would try to pull its frontend.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
tag=${SLUICE_IMAGE:-sluice:local}
started=$(date +%s%N)

[ -f dist/nodes/cli/main.js ] || npm run --silent build
[ -d node_modules ] || { echo "[build-image] no node_modules: run npm ci first" >&2; exit 1; }
node_bin=$(readlink -f "$(command -v node)")

inputs=$(
  {
    sha256sum "$node_bin" package.json package-lock.json deploy/docker/Dockerfile deploy/docker/build-image.sh
    find dist nodes/coordinator/dashboard/static -type f ! -name '*.d.ts' -print0 | sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-32
)
current=$(docker image inspect --format '{{index .Config.Labels "sluice.inputs"}}' "$tag" 2>/dev/null || true)
if [ "$current" = "$inputs" ] && [ "${FORCE:-0}" != 1 ]; then
  echo "[build-image] $tag is up to date ($inputs)"
  exit 0
fi

stage=$(mktemp -d /tmp/sluice-image-XXXXXX)
trap 'rm -rf "$stage"' EXIT
rootfs=$stage/rootfs
mkdir -p "$rootfs/usr/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/app/nodes/coordinator/dashboard"
chmod 1777 "$rootfs/tmp"
cp -L "$node_bin" "$rootfs/usr/bin/node"
cp -a package.json "$rootfs/app/"
cp -a dist "$rootfs/app/dist"
find "$rootfs/app/dist" -name '*.d.ts' -delete
cp -a nodes/coordinator/dashboard/static "$rootfs/app/nodes/coordinator/dashboard/"

# Production packages: every top-level (or @scope/name) folder npm lists without dev dependencies;
# a package's nested node_modules come with it.
npm ls --omit=dev --all --parseable 2>/dev/null \
  | sed -n "s#^$root/\(node_modules/.*\)#\1#p" \
  | awk -F/ '{ print ($2 ~ /^@/) ? $1"/"$2"/"$3 : $1"/"$2 }' | sort -u \
  | while read -r pkg; do
      mkdir -p "$rootfs/app/$(dirname "$pkg")"
      cp -a "$pkg" "$rootfs/app/$pkg"
    done
# Build leftovers the runtime never loads: sqlite's sources, object files, musl variants.
nm=$rootfs/app/node_modules
rm -rf "$nm/better-sqlite3/deps" "$nm/better-sqlite3/src" "$nm"/*/build/Release/obj.target \
  "$nm"/*/build/Release/.deps "$nm"/*/build/Release/test_extension.node "$nm/.bin"
find "$nm" -name '*.musl.node' -delete

# Shared libraries of node and of every native module, at their own paths (cp -L: the file, not
# the symlink). ldd prints "name => /path (0x…)" or "/path (0x…)".
find "$rootfs/usr/bin/node" "$nm" -type f \( -name node -o -name '*.node' \) -print0 \
  | xargs -0 -n1 ldd 2>/dev/null \
  | sed -n 's#.*[[:space:]]\(/[^[:space:]]*\) (0x[0-9a-f]*)$#\1#p; s#^[[:space:]]*\(/[^[:space:]]*\) (0x[0-9a-f]*)$#\1#p' \
  | sort -u | while read -r lib; do
      mkdir -p "$rootfs$(dirname "$lib")"
      cp -L "$lib" "$rootfs$lib"
    done

printf 'root:x:0:0:root:/:/sbin/nologin\nsluice:x:10001:10001:sluice:/app:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nsluice:x:10001:\n' >"$rootfs/etc/group"

DOCKER_BUILDKIT=0 docker build --quiet -f deploy/docker/Dockerfile --label "sluice.inputs=$inputs" \
  --tag "$tag" "$stage" >/dev/null
size=$(docker image inspect --format '{{.Size}}' "$tag")
ms=$((($(date +%s%N) - started) / 1000000))
echo "[build-image] built $tag in $((ms / 1000)).$((ms % 1000 / 100)) s, $((size / 1000000)) MB"
