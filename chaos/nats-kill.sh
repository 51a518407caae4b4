#!/usr/bin/env bash
# Kill a NATS node (default n3) abruptly, then restart it after --duration; it rejoins and
# catches up. A process gets SIGKILL; a container gets `docker kill` and `docker start`.
source "$(dirname "$0")/lib.sh"
parse_args "$@"
TARGET="${TARGET:-n3}"
kill_then_restart
