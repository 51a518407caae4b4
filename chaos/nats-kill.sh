#!/usr/bin/env bash
# Kill a NATS node (default n3) abruptly, then restart it after --duration; it rejoins and
# catches up. A process gets SIGKILL; a container gets `docker kill` and `docker start`.
source "$(dirname "$0")/lib.sh"
parse_args "$@"
TARGET="${TARGET:-n3}"
CONTAINER="$(cluster nats container "$TARGET")"
heal() { sluice restart --dir "$DIR" --id "$TARGET" >/dev/null; emit heal "$TARGET"; }
on_heal heal
if [ -n "$CONTAINER" ] && [ "$CONTAINER" != undefined ]; then docker kill "$CONTAINER" >/dev/null
else kill -KILL "$(pid_of "$TARGET")"; fi
INJECTED=1; emit inject "$TARGET"
hold
