#!/usr/bin/env bash
# The original README's Example 2, live: builds lockd and lockctl, starts lockd on a free port,
# runs a writer that holds file_A for 5 seconds and a reader that queues behind it, then stops
# lockd. Exits non-zero if the reader did not wait for the writer or read its value.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --bin lockd --bin lockctl
bin=target/debug
work=$(mktemp -d)
lockd_pid=
cleanup() {
    if [ -n "$lockd_pid" ]; then kill "$lockd_pid" 2>/dev/null || true; wait "$lockd_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

"$bin/lockd" --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/lockd.out" 2>"$work/lockd.log" &
lockd_pid=$!
for _ in $(seq 200); do
    grep -q '^Lock Server started on tcp://' "$work/lockd.out" 2>/dev/null && break
    sleep 0.05
done
started=$(head -n 1 "$work/lockd.out")
[ -n "$started" ] || { echo "demo: lockd did not start:" >&2; cat "$work/lockd.log" >&2; exit 1; }
echo "Terminal 1 (server): lockd --listen 127.0.0.1:0"
echo "  $started"
export LOCKD_ADDR=${started#Lock Server started on tcp://}

echo
echo "Terminal 2 (Client 1 - Writer): lockctl file_A WRITE \"Shared Resource Test\" 5"
echo "Terminal 3 (Client 2 - Reader, started while Client 1 holds the lock): lockctl file_A READ"
echo
# Each client's lines appear as they happen, tagged with the client's name.
"$bin/lockctl" file_A WRITE "Shared Resource Test" 5 | tee "$work/client1" | sed -u 's/^/Client 1: /' &
writer=$!
until grep -q '^LOCKED' "$work/client1" 2>/dev/null; do sleep 0.05; done
"$bin/lockctl" file_A READ | tee "$work/client2" | sed -u 's/^/Client 2: /' &
reader=$!
wait "$writer"
wait "$reader"

kill -TERM "$lockd_pid"
wait "$lockd_pid"
lockd_pid=

grep -q '^WAITING for file_A (position 1 in queue)$' "$work/client2" \
    && grep -qx 'READ from file_A: Shared Resource Test' "$work/client2" \
    || { echo "demo: the reader did not wait for the writer's value" >&2; exit 1; }
echo
echo "demo: OK (the reader waited in line, then read what the writer wrote)"
