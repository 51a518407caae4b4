#!/usr/bin/env bash
# Scale out by one worker, hold --duration seconds, then scale back in (graceful drain).
# With --target ID the added worker gets that id.
source "$(dirname "$0")/lib.sh"
parse_args "$@"
ADDED=""
heal() { if [ -n "$ADDED" ]; then sluice worker remove --dir "$DIR" --id "$ADDED" >/dev/null; fi; emit heal "${ADDED:-none}"; }
on_heal heal
ADDED="$(sluice worker add --dir "$DIR" ${TARGET:+--id "$TARGET"} | sed -n 's/^started worker \([^ ]*\).*/\1/p')"
INJECTED=1; emit inject "$ADDED"
hold
