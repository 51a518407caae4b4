#!/usr/bin/env bash
# Restart every worker, one after the other, each gracefully (drain, then start again),
# pausing --duration seconds between two workers.
source "$(dirname "$0")/lib.sh"
parse_args "$@"
heal() { emit heal "workers"; }
on_heal heal
INJECTED=1; emit inject "workers"
for id in $(cluster workers id); do
  sluice restart --dir "$DIR" --id "$id" >/dev/null
  sleep "$DURATION"
done
