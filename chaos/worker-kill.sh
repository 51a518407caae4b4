#!/usr/bin/env bash
# SIGKILL a worker (default: the first running one), then start it again after --duration.
source "$(dirname "$0")/lib.sh"
parse_args "$@"
TARGET="${TARGET:-$(first_running workers)}"
heal() { sluice restart --dir "$DIR" --id "$TARGET" >/dev/null; emit heal "$TARGET"; }
on_heal heal
kill -KILL "$(pid_of "$TARGET")"; INJECTED=1; emit inject "$TARGET"
hold
