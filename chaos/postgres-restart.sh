#!/usr/bin/env bash
# Stop the cluster's private PostgreSQL server (fast shutdown: open transactions roll back and
# every connection breaks), keep it down for --duration, then start it again on the same data.
# Workers' commits fail meanwhile: their shards wait and retry, never skip.
source "$(dirname "$0")/lib.sh"
parse_args "$@"
TARGET="${TARGET:-pg}"
pid="$(cluster postgres pid "$TARGET")"
[ -n "$pid" ] || { echo "$FAULT: no private PostgreSQL server in $DIR (start the cluster with --sink postgres)" >&2; exit 2; }
restart_pg() { sluice restart --dir "$DIR" --id "$TARGET" >/dev/null; emit heal "$TARGET"; }
on_heal restart_pg
INJECTED=1
kill -INT "$pid"
for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
emit inject "$TARGET"
hold
