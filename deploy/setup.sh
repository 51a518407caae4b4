#!/usr/bin/env bash
# Installs what sluice needs on a Debian machine with Node.js >= 20.19: a current nats-server
# (deploy/nats/install-nats-server.sh, into deploy/nats/bin/ only), a C++ toolchain for
# better-sqlite3, Chromium for the dashboard test, PostgreSQL's server binaries, the npm
# dependencies, and the compiled sources. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# Headless browser of the dashboard's integration test (driven by playwright-core).
[ -x /usr/bin/chromium ] || missing+=(chromium)
# PostgreSQL server binaries: `sluice up --sink postgres` and the tests start private servers
# from them (initdb under the cluster's folder); the package's own system cluster is unused.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] installing ${missing[*]} with apt-get"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

bash deploy/nats/install-nats-server.sh

stamp=node_modules/.sluice-lock-stamp
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  echo "[setup] installing npm dependencies"
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json "$stamp"
fi

echo "[setup] compiling"
node node_modules/typescript/bin/tsc -p tsconfig.json
chmod +x dist/nodes/cli/main.js
