#!/usr/bin/env bash
# Starve the machine's CPUs with stress-ng for --duration seconds (one hog per core).
source "$(dirname "$0")/lib.sh"
parse_args "$@"
TARGET="${TARGET:-$(nproc)}"
STRESS_PID=""
heal() { if [ -n "$STRESS_PID" ]; then kill "$STRESS_PID" 2>/dev/null || true; wait "$STRESS_PID" 2>/dev/null || true; fi; emit heal "cpu"; }
on_heal heal
INJECTED=1
# The timeout bounds the hogs even if the heal never learns their pid.
stress-ng --cpu "$TARGET" --timeout "$((DURATION + 5))s" --quiet &
STRESS_PID=$!; emit inject "cpu" "\"hogs\":$TARGET"
hold
