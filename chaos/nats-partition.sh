#!/usr/bin/env bash
# Cut a NATS node (default n3) off its peers on its cluster (route) port with iptables, on
# loopback only; clients keep their connections to it. The node must run under its own uid
# (sluice up does that when run as root) so its outgoing route traffic can be matched. The
# cut is symmetric: route connections the node itself dialed are dropped in both directions
# too (matched by their local port), so the node neither sends to nor hears from its peers.
source "$(dirname "$0")/lib.sh"
parse_args "$@"
TARGET="${TARGET:-n3}"
PID="$(pid_of "$TARGET")"
NODE_UID="$(stat -c %u "/proc/$PID")"
[ "$NODE_UID" != 0 ] || { echo "$FAULT: $TARGET runs as root; start the cluster as root so nodes get their own uids" >&2; exit 2; }
cluster_port() { awk '/^cluster/{c=1} c && /listen:/{split($2,a,":"); print a[2]; exit}' "$1"; }
PORTS="$(for f in "$DIR"/nats/n*.conf; do cluster_port "$f"; done | paste -sd, -)"
OWN="$(cluster_port "$DIR/nats/$TARGET.conf")"
RULES=(
  "OUTPUT -o lo -p tcp -m owner --uid-owner $NODE_UID -m multiport --dports $PORTS -j DROP"
  "OUTPUT -o lo -p tcp -m owner --uid-owner $NODE_UID --sport $OWN -j DROP"
  "INPUT -i lo -p tcp --dport $OWN -j DROP"
)
heal() {
  local r
  for r in "${RULES[@]}"; do
    # shellcheck disable=SC2086
    while iptables -C $r 2>/dev/null; do iptables -D $r; done
  done
  emit heal "$TARGET"
}
on_heal heal
INJECTED=1
# Local ports of the node's established connections to a peer's cluster port (routes it dialed).
dialed_ports() {
  ss -Htnp state established 2>/dev/null | awk -v pid="pid=$PID," -v ports=",$PORTS," '
    index($0, pid) { n = split($3, l, ":"); m = split($4, r, ":"); if (index(ports, "," r[m] ",")) print l[n] }'
}
for p in $(dialed_ports); do RULES+=("INPUT -i lo -p tcp --dport $p -j DROP"); done
for r in "${RULES[@]}"; do
  # shellcheck disable=SC2086
  iptables -I $r
done
emit inject "$TARGET" "\"ports\":\"$PORTS\""
hold
