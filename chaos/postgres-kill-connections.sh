#!/usr/bin/env bash
# Kill every connection to the sink's database (pg_terminate_backend), mid-transaction for
# those committing, every second for --duration. The server stays up; workers reconnect and
# retry each commit that broke.
source "$(dirname "$0")/lib.sh"
parse_args "$@"
TARGET="${TARGET:-pg}"
port="$(cluster postgres port "$TARGET")"
[ -n "$port" ] || { echo "$FAULT: no private PostgreSQL server in $DIR (start the cluster with --sink postgres)" >&2; exit 2; }
kill_connections() {
  psql -X -q -h 127.0.0.1 -p "$port" -U sluice -d postgres -c \
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = 'sluice' AND pid <> pg_backend_pid()" \
    >/dev/null 2>&1 || true
}
done_killing() { emit heal "$TARGET"; }
on_heal done_killing
kill_connections
INJECTED=1; emit inject "$TARGET"
end=$(( $(date +%s) + DURATION ))
while [ "$(date +%s)" -lt "$end" ]; do sleep 1; kill_connections; done
