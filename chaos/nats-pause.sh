#!/usr/bin/env bash
# Freeze a NATS node (default n2) for --duration seconds, then let it run on: `docker pause` /
# `docker unpause` when it runs in a container, SIGSTOP / SIGCONT when it is a process.
source "$(dirname "$0")/lib.sh"
parse_args "$@"
TARGET="${TARGET:-n2}"
CONTAINER="$(cluster nats container "$TARGET")"
PID="$(pid_of "$TARGET")"
heal() {
  if [ -n "$CONTAINER" ] && [ "$CONTAINER" != undefined ]; then docker unpause "$CONTAINER" >/dev/null 2>&1 || true
  else kill -CONT "$PID" 2>/dev/null || true; fi
  emit heal "$TARGET"
}
on_heal heal
# Set first: interrupted during the pause, the heal must still run (it tolerates no pause).
INJECTED=1
if [ -n "$CONTAINER" ] && [ "$CONTAINER" != undefined ]; then docker pause "$CONTAINER" >/dev/null; else kill -STOP "$PID"; fi
emit inject "$TARGET" "\"container\":$([ -n "$CONTAINER" ] && [ "$CONTAINER" != undefined ] && echo true || echo false)"
hold
