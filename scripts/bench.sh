#!/usr/bin/env bash
# Reproduces docs/benchmarks.md: builds lockd and lockbench in release mode, starts a throwaway
# Redis on a free port (installing redis-server with apt-get first when it is missing and we are
# root), runs every lockbench mode against lockd with the Redis and echo comparisons, repeats the
# comparisons with a two-thread client and with lockd on one worker thread, writes
# docs/bench/{results.jsonl,chart.svg,table.txt,machine.txt}, and stops Redis; then runs
# scripts/bench-cluster.sh (a 3-node lockd cluster against a 3-node etcd, docs/bench/cluster-*)
# unless BENCH_CLUSTER=0. Safe to run again: every output file is replaced. Extra
# arguments go to lockbench, e.g. `--duration 2` for a quicker run or `--scale-locks 100000` for
# a smaller scale run.
set -euo pipefail
cd "$(dirname "$0")/.."

out=docs/bench
mkdir -p "$out"
work=$(mktemp -d)
redis_pid=
cleanup() {
    if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --quiet --bin lockd --bin lockbench

# Redis, for the comparison runs. Without it the suite still runs, with no Redis ratios.
if ! command -v redis-server >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bench: installing redis-server" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
redis_args=()
if command -v redis-server >/dev/null 2>&1; then
    # A free port: the first in the range that nothing answers on.
    for port in $(seq 26379 26479); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then continue; fi
        redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
            >"$work/redis.log" 2>&1 &
        redis_pid=$!
        for _ in $(seq 100); do
            if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
            sleep 0.05
        done
        if kill -0 "$redis_pid" 2>/dev/null; then
            redis_args=(--compare-redis "127.0.0.1:$port" --redis-pid "$redis_pid")
            break
        fi
        redis_pid=
    done
    [ -n "$redis_pid" ] || { echo "bench: redis-server would not start:" >&2; cat "$work/redis.log" >&2; }
else
    echo "bench: redis-server not available; running without the Redis comparison" >&2
fi

# The machine, as docs/benchmarks.md reports it. A busy machine makes every ratio noisy.
{
    echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "cpu: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "cores: $(nproc)"
    echo "memory: $(free -h | awk '/^Mem:/ {print $2}')"
    echo "kernel: $(uname -sr)"
    echo "rustc: $(rustc --version)"
    if command -v redis-server >/dev/null 2>&1; then echo "redis: $(redis-server --version)"; fi
    echo "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$out/machine.txt"
cat "$out/machine.txt" >&2

# The suite, with lockbench's default client: one current-thread runtime. This machine may be
# shared (with builds, say): a window during which other processes used the CPU is measured
# again, up to five times, and the table flags any run that stayed disturbed.
target/release/lockbench --mode all --compare-echo "${redis_args[@]}" --busy-retries 5 \
    --scale-locks 1000000 --scale-waiters 10000 --idle-connections 10000 \
    --json-out "$out/results.jsonl" --svg "$out/chart.svg" "$@" | tee "$work/stdout"
# The comparisons again with a two-thread client, because on two cores the client's runtime
# moves the ratios (see docs/benchmarks.md). Its lines are appended to results.jsonl.
target/release/lockbench --mode uncontended,contended --compare-echo "${redis_args[@]}" \
    --client-threads 2 --busy-retries 5 --json-out "$work/threads2.jsonl" "$@" | tee "$work/stdout2"
cat "$work/threads2.jsonl" >>"$out/results.jsonl"
# And with lockd on one worker thread (the echo server and Redis have one thread each): on two
# cores shared with the client, fewer server threads is faster (see docs/benchmarks.md).
target/release/lockbench --mode uncontended,contended,writes --compare-echo "${redis_args[@]}" \
    --lockd-arg=--worker-threads=1 --busy-retries 5 --json-out "$work/worker1.jsonl" "$@" \
    | tee "$work/stdout3"
cat "$work/worker1.jsonl" >>"$out/results.jsonl"
{
    echo "== lockbench --mode all (client: 1 thread)"
    grep -v '^{' "$work/stdout" | sed '/./,$!d'
    echo
    echo "== lockbench --mode uncontended,contended --client-threads 2"
    grep -v '^{' "$work/stdout2" | sed '/./,$!d'
    echo
    echo "== lockbench --mode uncontended,contended,writes --lockd-arg=--worker-threads=1"
    grep -v '^{' "$work/stdout3" | sed '/./,$!d'
} >"$out/table.txt"
echo "load average after the run: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/machine.txt"
echo "bench: wrote $out/results.jsonl, $out/chart.svg, $out/table.txt and $out/machine.txt" >&2

# The cluster comparison (issue 19): its own script, since it needs etcd and protoc and starts
# clusters rather than one lockd. Same extra arguments.
if [ "${BENCH_CLUSTER:-1}" != 0 ]; then
    bash scripts/bench-cluster.sh 3 "$@"
fi
