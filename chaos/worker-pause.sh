#!/usr/bin/env bash
# SIGSTOP a worker for --duration seconds (longer than its lease), then SIGCONT it.
source "$(dirname "$0")/lib.sh"
parse_args "$@"
TARGET="${TARGET:-$(first_running workers)}"
PID="$(pid_of "$TARGET")"
heal() { kill -CONT "$PID" 2>/dev/null || true; emit heal "$TARGET"; }
on_heal heal
# Set first: interrupted right after the SIGSTOP, the heal must still run.
INJECTED=1; kill -STOP "$PID"; emit inject "$TARGET"
hold
