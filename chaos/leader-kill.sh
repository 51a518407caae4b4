#!/usr/bin/env bash
# SIGKILL the leader coordinator, then start it again (as a standby) after --duration.
source "$(dirname "$0")/lib.sh"
parse_args "$@"
TARGET="${TARGET:-$(leader)}"
kill_then_restart
