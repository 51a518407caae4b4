#!/usr/bin/env bash
# Puts a current nats-server in deploy/nats/bin/ (the newest Debian's testing suite carries),
# without installing or upgrading anything on the machine: apt reads the suite's index into a
# private folder, downloads the package (checked against the signed index) and dpkg-deb
# unpacks it here. Idempotent: does nothing when the binary there already meets the floor.
#
# Usage: bash deploy/nats/install-nats-server.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$here/bin/nats-server"
# The lowest version sluice runs on; keep in step with NATS_SERVER_FLOOR in shared/contract/wire.ts.
floor="2.12.12"

version_of() { "$1" --version 2>/dev/null | sed -n 's/^nats-server: v//p'; }
at_least() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

if [ -x "$bin" ] && v="$(version_of "$bin")" && [ -n "$v" ] && at_least "$v" "$floor"; then
  echo "[nats-server] v$v in $bin"
  exit 0
fi

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
for tool in apt-get dpkg-deb; do
  command -v "$tool" >/dev/null 2>&1 || { echo "[nats-server] $tool is missing: this script needs Debian's apt" >&2; exit 1; }
done
if [ ! -r /usr/share/keyrings/debian-archive-keyring.gpg ]; then
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debian-archive-keyring >/dev/null
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# apt's download helper runs as _apt: the folder it writes to must be reachable for it.
chmod 0755 "$work"
mkdir -p "$work/lists/partial" "$work/archives/partial"
apt_opts=(
  -o "Dir::Etc::sourcelist=$here/debian-testing.sources"
  -o "Dir::Etc::sourceparts=-"
  -o "Dir::State::Lists=$work/lists"
  -o "Dir::Cache::archives=$work/archives"
  -o "APT::Get::List-Cleanup=0"
  -o "Debug::NoLocking=1"
)
echo "[nats-server] reading Debian's testing index"
apt-get "${apt_opts[@]}" update -qq
(cd "$work" && apt-get "${apt_opts[@]}" download nats-server >/dev/null 2>"$work/download.log") || {
  cat "$work/download.log" >&2
  exit 1
}
deb="$(ls "$work"/nats-server_*.deb)"
dpkg-deb -x "$deb" "$work/x"
mkdir -p "$here/bin"
install -m 0755 "$work/x/usr/sbin/nats-server" "$bin.new"
mv -f "$bin.new" "$bin"
v="$(version_of "$bin")"
if [ -z "$v" ] || ! at_least "$v" "$floor"; then
  echo "[nats-server] Debian's testing suite has v${v:-?}, below sluice's floor v$floor" >&2
  exit 1
fi
echo "[nats-server] v$v from $(basename "$deb") in $bin"
