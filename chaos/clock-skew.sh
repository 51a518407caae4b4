#!/usr/bin/env bash
# Restart a worker with its wall clock skewed (libfaketime; default +30s; set SKEW=-45s etc.),
# keep it so for --duration seconds, then restart it with the real clock.
source "$(dirname "$0")/lib.sh"
parse_args "$@"
TARGET="${TARGET:-$(first_running workers)}"
SKEW="${SKEW:-+30s}"
heal() { sluice restart --dir "$DIR" --id "$TARGET" >/dev/null; emit heal "$TARGET"; }
on_heal heal
INJECTED=1
sluice restart --dir "$DIR" --id "$TARGET" --faketime "$SKEW" >/dev/null
emit inject "$TARGET" "\"skew\":\"$SKEW\""
hold
