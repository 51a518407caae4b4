#!/usr/bin/env bash
# SIGKILL the leader coordinator, then start it again (as a standby) after --duration.
source "$(dirname "$0")/lib.sh"
parse_args "$@"
TARGET="${TARGET:-$(leader)}"
heal() { sluice restart --dir "$DIR" --id "$TARGET" >/dev/null; emit heal "$TARGET"; }
on_heal heal
kill -KILL "$(pid_of "$TARGET")"; INJECTED=1; emit inject "$TARGET"
hold
