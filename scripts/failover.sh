#!/usr/bin/env bash
# The failover figures of docs/cluster.md and issue 19: a run of leader kills.
#
# lockbench starts a 3-node lockd cluster on loopback with --election-timeout-ms (default 1000),
# keeps one writer client writing to a lock it holds (following the leader and resuming its
# session as lockctl does), SIGKILLs the leader, measures until the writer is served again,
# restarts the killed node on its old ports and data, and repeats KILLS times (default 20).
# Each kill prints one JSON line; the last line is the summary (median and worst of every
# measure, and their ratios to the election timeout), shown as a table at the end.
#
# Outputs (replaced): docs/bench/failover.jsonl and docs/bench/failover-table.md (another folder
# with BENCH_OUT=DIR).
# Usage: scripts/failover.sh [KILLS] [ELECTION_TIMEOUT_MS] [extra lockbench flags, e.g.
# --lockd-bin PATH to measure another lockd build]
set -euo pipefail
cd "$(dirname "$0")/.."

kills=${1:-20}
timeout_ms=${2:-1000}
shift $(($# > 2 ? 2 : $#))
out=${BENCH_OUT:-docs/bench}
mkdir -p "$out"

# Two builds, as in bench-cluster.sh: built together, lockd would get the dependency features
# lockbench unifies into it and be rebuilt (a few minutes of LTO) whenever the scripts alternate.
cargo build --release --quiet --bin lockd
cargo build --release --quiet --bin lockbench
lockbench=${CARGO_TARGET_DIR:-target}/release/lockbench

echo "failover: $kills leader kills, --election-timeout-ms $timeout_ms, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$lockbench" --cluster --mode failover --kills "$kills" \
    --lockd-arg=--election-timeout-ms="$timeout_ms" \
    --json-out "$out/failover.jsonl" "$@" >/dev/null
"$lockbench" --summarize "$out/failover.jsonl" | tee "$out/failover-table.md"
