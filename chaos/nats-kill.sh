#!/usr/bin/env bash
# SIGKILL a NATS node (default n3), then restart it after --duration; it rejoins and catches up.
source "$(dirname "$0")/lib.sh"
parse_args "$@"
TARGET="${TARGET:-n3}"
heal() { sluice restart --dir "$DIR" --id "$TARGET" >/dev/null; emit heal "$TARGET"; }
on_heal heal
kill -KILL "$(pid_of "$TARGET")"; INJECTED=1; emit inject "$TARGET"
hold
