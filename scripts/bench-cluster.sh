#!/usr/bin/env bash
# The cluster benchmark of docs/benchmarks.md ("Cluster mode"): a 3-node lockd cluster against a
# 3-node etcd, both on loopback on this machine, with the same lockbench loops in the same run,
# so that the ratios share one machine state (issue 19).
#
# It installs what is missing when it can (root with apt-get): protobuf-compiler, because
# lockbench's etcd client compiles etcd's .proto files (the `etcd` feature), and etcd-server,
# Debian's etcd, with etcd-client for etcdctl. It builds lockd and lockbench in release mode,
# starts three etcd members on free ports with temporary data directories, and runs, ROUNDS times (default 3, alternating
# the two lockbench invocations so that a slow minute hits both servers):
#   lockbench --cluster --mode uncontended --connections 1,64   (1 and 64 clients)
#   lockbench --cluster --mode contended,reads                   (16 clients on one lock; 64
#                                                                 clients reading, then writing)
# each against a fresh lockd cluster that lockbench starts (it reports each node's RSS) and the
# same etcd (whose members' CPU time and RSS it reads by pid). Then it writes the median of the
# rounds with `lockbench --summarize`, and stops etcd.
#
# Outputs (replaced on every run): docs/bench/cluster-results.jsonl (every run's JSON line),
# docs/bench/cluster-table.md (the medians and ratios), docs/bench/cluster-machine.txt; another
# folder with BENCH_OUT=DIR (to keep a baseline while measuring a change).
# Usage: scripts/bench-cluster.sh [ROUNDS] [extra lockbench flags, e.g. --duration 2, or
# --lockd-bin PATH to measure another lockd build]
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then rounds=$1; shift; fi
out=${BENCH_OUT:-docs/bench}
mkdir -p "$out"
work=$(mktemp -d)
etcd_pids=()
cleanup() {
    for pid in "${etcd_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${etcd_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# What the run needs and a plain machine may lack. Without root or apt-get, say what is missing.
need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
# etcdctl, to wait until the etcd cluster is healthy: Debian ships it apart from the server.
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bench-cluster: installing ${need[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "bench-cluster: needs ${need[*]} (Debian packages); install them or run as root" >&2
        exit 1
    fi
fi

cargo build --release --quiet --bin lockd
cargo build --release --quiet -p lockbench --features etcd
lockbench=${CARGO_TARGET_DIR:-target}/release/lockbench

# Six free ports on 127.0.0.1 (a client and a peer port per member), from a range well away
# from the ephemeral ports lockd's own nodes get.
. scripts/free-ports.sh
mapfile -t ports < <(free_ports 6 23790 23990)
[ ${#ports[@]} -eq 6 ] || exit 1
cluster=""
for i in 1 2 3; do
    cluster+="${cluster:+,}e$i=http://127.0.0.1:${ports[$((2 * i - 1))]}"
done
endpoints=""
for i in 1 2 3; do
    client=${ports[$((2 * i - 2))]}
    peer=${ports[$((2 * i - 1))]}
    endpoints+="${endpoints:+,}127.0.0.1:$client"
    # etcd's defaults otherwise (heartbeat 100 ms, election 1000 ms, fsync on every commit),
    # as lockd runs with its defaults: what each ships with is what is compared.
    etcd --name "e$i" --data-dir "$work/e$i" \
        --listen-client-urls "http://127.0.0.1:$client" \
        --advertise-client-urls "http://127.0.0.1:$client" \
        --listen-peer-urls "http://127.0.0.1:$peer" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "$cluster" --initial-cluster-state new \
        --initial-cluster-token lockbench --logger zap --log-level warn \
        >"$work/e$i.log" 2>&1 &
    etcd_pids+=($!)
done
# Healthy means a leader serves a linearizable read through every member.
for _ in $(seq 200); do
    if ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1; then break; fi
    sleep 0.1
done
if ! ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >&2; then
    echo "bench-cluster: etcd did not become healthy; its logs:" >&2
    tail -n 20 "$work"/e*.log >&2
    exit 1
fi
pids=$(IFS=,; echo "${etcd_pids[*]}")

{
    echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "cpu: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "cores: $(nproc)"
    echo "memory: $(free -h | awk '/^Mem:/ {print $2}')"
    echo "kernel: $(uname -sr)"
    echo "filesystem of the data directories: $(df -T "${TMPDIR:-/tmp}" | awk 'NR==2 {print $2}')"
    echo "rustc: $(rustc --version)"
    echo "etcd: $(etcd --version | head -n 1)"
    echo "rounds: $rounds"
    echo "source: $(git rev-parse --short HEAD 2>/dev/null || echo unknown) (lockd built from it unless --lockd-bin is given)"
    echo "extra lockbench flags: ${*:-none}"
    echo "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$out/cluster-machine.txt"
cat "$out/cluster-machine.txt" >&2

results="$out/cluster-results.jsonl"
: >"$results"
# No --busy-retries: while one server runs its loop the other cluster idles beside it (its
# heartbeats count as "other processes"), and on a shared machine a retry rarely finds a quieter
# window; the rounds and their median are what absorb the noise. Each JSON line keeps the CPU
# that other processes used during its window.
common=(--cluster --compare-etcd "$endpoints" --etcd-pids "$pids")
for round in $(seq "$rounds"); do
    echo "== round $round of $rounds: uncontended, 1 and 64 clients" >&2
    "$lockbench" "${common[@]}" --mode uncontended --connections 1,64 \
        --json-out "$work/a.jsonl" "$@" | grep -v '^{' >&2
    cat "$work/a.jsonl" >>"$results"
    echo "== round $round of $rounds: contended (16 clients), reads (64 clients)" >&2
    "$lockbench" "${common[@]}" --mode contended,reads \
        --json-out "$work/b.jsonl" "$@" | grep -v '^{' >&2
    cat "$work/b.jsonl" >>"$results"
done
echo "load average after the run: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/cluster-machine.txt"
"$lockbench" --summarize "$results" | tee "$out/cluster-table.md"
echo "bench-cluster: wrote $results, $out/cluster-table.md and $out/cluster-machine.txt" >&2
