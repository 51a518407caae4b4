# Shared helpers of the chaos scripts. Each script injects one fault into a cluster started by
# `sluice up` (it reads <dir>/cluster.json), holds it for --duration seconds, then heals it.
# The heal also runs from a trap on EXIT/INT/TERM, so an interrupted script removes what it
# added. Each script prints one JSON line per step on stdout, for `sluice chaos` and for people:
#   {"event":"inject"|"heal","fault":F,"target":T,"at":<epoch ms>}
set -euo pipefail

CHAOS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR=.sluice
DURATION=5
TARGET=""
FAULT="$(basename "$0" .sh)"
INJECTED=0
HEALED=0

usage() {
  sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'
  echo "options: --dir D (default .sluice)  --duration SECONDS (default 5)  --target ID"
}

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --dir) DIR="$2"; shift 2 ;;
      --duration) DURATION="$2"; shift 2 ;;
      --target) TARGET="$2"; shift 2 ;;
      -h|--help) usage; exit 0 ;;
      *) echo "$FAULT: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
  done
  [ -f "$DIR/cluster.json" ] || { echo "$FAULT: no cluster in $DIR (run 'npx sluice up' first)" >&2; exit 2; }
}

sluice() { node "$CHAOS_ROOT/dist/nodes/cli/main.js" "$@"; }

now_ms() { date +%s%3N; }

emit() { # emit EVENT TARGET [EXTRA_JSON]
  printf '{"event":"%s","fault":"%s","target":"%s","at":%s%s}\n' "$1" "$FAULT" "$2" "$(now_ms)" "${3:+,$3}"
}

# cluster ROLE FIELD [ID]: a field of the processes of one role (nats, sinks, coordinators, workers)
cluster() {
  node -e '
    const c = require(require("path").resolve(process.argv[1], "cluster.json"));
    const [role, field, id] = process.argv.slice(2);
    for (const p of c[role] ?? []) if (!id || p.id === id) console.log(p[field]);
  ' "$DIR" "$@"
}

pid_of() { # pid_of ID -> pid of any listed process
  local id="$1" role
  for role in workers coordinators nats sinks; do
    local p; p="$(cluster "$role" pid "$id")"
    if [ -n "$p" ]; then echo "$p"; return 0; fi
  done
  echo "$FAULT: no process $id in $DIR/cluster.json" >&2; return 1
}

running() { kill -0 "$1" 2>/dev/null && [ "$(tr -d '\0' < "/proc/$1/cmdline" 2>/dev/null | grep -c "$(cd "$DIR" && pwd)")" -gt 0 ]; }

first_running() { # first_running ROLE -> id of the first running process of ROLE
  local id
  for id in $(cluster "$1" id); do
    if running "$(cluster "$1" pid "$id")"; then echo "$id"; return 0; fi
  done
  echo "$FAULT: no running $1" >&2; return 1
}

leader() { # the leader coordinator; waits up to 20 s for one (right after a fault there may be none)
  local i id
  for i in $(seq 1 40); do
    id="$(sluice status --dir "$DIR" --json 2>/dev/null | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{try{const j=JSON.parse(s);if(j.leader)console.log(j.leader.holder)}catch{}})')" || true
    if [ -n "$id" ]; then echo "$id"; return 0; fi
    sleep 0.5
  done
  echo "$FAULT: no leader coordinator" >&2; return 1
}

# on_heal FUNCTION: run FUNCTION once, on normal end or when interrupted. A script sets
# INJECTED=1 just before it starts injecting, so an interrupt that lands while the fault is
# going in still heals it; every heal is safe on a fault only partly injected (a restart of a
# process that was never stopped restarts it, a kill of a helper never started is skipped).
on_heal() {
  HEAL_FN="$1"
  trap 'do_heal' EXIT
  trap 'exit 130' INT TERM
}

do_heal() {
  if [ -n "$HOLD_PID" ]; then kill "$HOLD_PID" 2>/dev/null || true; fi
  if [ "$INJECTED" = 1 ] && [ "$HEALED" = 0 ]; then
    HEALED=1
    "$HEAL_FN" || echo "$FAULT: heal failed" >&2
  fi
}

# In the background and waited for: bash runs a trap only once its foreground command ends, so
# an interrupted script heals at once instead of after the rest of the hold.
HOLD_PID=""
hold() { sleep "$DURATION" & HOLD_PID=$!; wait "$HOLD_PID"; HOLD_PID=""; }

# kill_then_restart: crash $TARGET now (SIGKILL, or `docker kill` for a containerised NATS
# node), hold --duration, then start it again with `sluice restart`; also when interrupted.
kill_then_restart() {
  local container pid=""
  container="$(cluster nats container "$TARGET")"
  if [ -z "$container" ] || [ "$container" = undefined ]; then container=""; pid="$(pid_of "$TARGET")"; fi
  restart_target() { sluice restart --dir "$DIR" --id "$TARGET" >/dev/null; emit heal "$TARGET"; }
  on_heal restart_target
  INJECTED=1
  if [ -n "$container" ]; then docker kill "$container" >/dev/null; else kill -KILL "$pid"; fi
  emit inject "$TARGET"
  hold
}
