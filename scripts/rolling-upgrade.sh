#!/usr/bin/env bash
# A rolling upgrade of a 3-node cluster, from one lockd binary to another (docs/operations.md,
# "Upgrade"): starts the cluster on OLD, writes a value, then stops each node in turn (node 3,
# then 2, then 1, so the node that leads at the start goes last) and restarts it on NEW with its
# own data directory, and writes a value after each restart through lockctl, which follows the
# leader. Ends with a read, which must give the last value written. Swap the two binaries to
# check a rollback.
#
# Usage: scripts/rolling-upgrade.sh OLD_LOCKD NEW_LOCKD [LOCKCTL]
#   LOCKCTL defaults to target/release/lockctl. Exits non-zero, with the nodes' logs, if a write
#   is not acknowledged within 15 s or the read is wrong.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 2 ]; then
    echo "usage: $0 OLD_LOCKD NEW_LOCKD [LOCKCTL]" >&2
    exit 2
fi
old=$1
new=$2
lockctl=${3:-target/release/lockctl}
for bin in "$old" "$new" "$lockctl"; do
    [ -x "$bin" ] || { echo "rolling-upgrade: $bin is not an executable" >&2; exit 2; }
done

work=$(mktemp -d)
pids=(0 0 0 0)
cleanup() {
    for i in 1 2 3; do
        [ "${pids[$i]}" != 0 ] && kill "${pids[$i]}" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Six free ports on 127.0.0.1 (a client and a peer port per node).
. scripts/free-ports.sh
mapfile -t ports < <(free_ports 6 24790 24990)
[ ${#ports[@]} -eq 6 ] || exit 1
client() { echo "127.0.0.1:${ports[$((2 * $1 - 2))]}"; }
peer() { echo "127.0.0.1:${ports[$((2 * $1 - 1))]}"; }
members="1=$(client 1)/$(peer 1),2=$(client 2)/$(peer 2),3=$(client 3)/$(peer 3)"
servers="$(client 1),$(client 2),$(client 3)"

start() { # NODE BINARY
    local extra=()
    [ "$1" = 1 ] && [ ! -d "$work/n1" ] && extra=(--bootstrap)
    echo "== node $1 on $2" >>"$work/n$1.log"
    "$2" --listen "$(client "$1")" --peer-listen "$(peer "$1")" --node-id "$1" \
        --peers "$members" --data-dir "$work/n$1" "${extra[@]}" >>"$work/n$1.log" 2>&1 &
    pids[$1]=$!
}
stop() { # NODE
    kill "${pids[$1]}"
    wait "${pids[$1]}" 2>/dev/null || true
    pids[$1]=0
}
fail() {
    echo "rolling-upgrade: $1; the nodes' logs:" >&2
    tail -n 15 "$work"/n*.log >&2
    exit 1
}
write() { # VALUE
    local deadline=$((SECONDS + 15)) out
    until out=$("$lockctl" --server "$servers" rolling_upgrade WRITE "$1" 0 2>&1); do
        [ $SECONDS -lt $deadline ] || fail "writing $1 failed: $out"
        sleep 0.2
    done
    echo "rolling-upgrade: wrote $1"
}

for i in 1 2 3; do start "$i" "$old"; done
write before
for i in 3 2 1; do
    stop "$i"
    start "$i" "$new"
    write "after-node-$i"
done
read=$("$lockctl" --server "$servers" rolling_upgrade READ 2>&1) || fail "the read failed: $read"
echo "$read" | grep -q "READ from rolling_upgrade: after-node-1" || fail "the read gave: $read"
echo "rolling-upgrade: every node runs $new; the last value read back"
