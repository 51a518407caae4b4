#!/usr/bin/env bash
# SIGKILL a worker (default: the first running one), then start it again after --duration.
source "$(dirname "$0")/lib.sh"
parse_args "$@"
TARGET="${TARGET:-$(first_running workers)}"
kill_then_restart
