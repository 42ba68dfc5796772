#!/usr/bin/env bash
# Runs the test suite (the tests of scripts/test.sh: the Python client's pytest, then nextest)
# N times in a row, with two CPU-burning processes beside it the whole time, and no retries: a
# test that fails once here is flaky. Prints each run's result and failed tests, then "N runs,
# F failed"; exits non-zero if any run failed. Each run's full output is kept in
# target/soak/run-I.log. With extra arguments, only nextest runs, with those arguments.
#
#   scripts/soak-tests.sh 20                                        # the whole suite, 20 times
#   scripts/soak-tests.sh 30 -E 'test(metrics_count_lock_traffic)'  # extra nextest arguments
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 1 ] || ! [ "$1" -ge 1 ] 2>/dev/null; then
    echo "usage: scripts/soak-tests.sh N [nextest arguments...]" >&2
    exit 2
fi
runs=$1
shift
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "scripts/soak-tests.sh: cargo-nextest is missing; scripts/test.sh installs it" >&2
    exit 1
fi

logs=target/soak
mkdir -p "$logs"
rm -f "$logs"/run-*.log

with_python=$([ $# -eq 0 ] && echo yes || echo no)
echo "== building the tests once"
cargo nextest run --workspace --no-run "$@"
if [ "$with_python" = yes ]; then
    # Sets up the venv, type-checks, and runs the Python tests once before the soak.
    bash clients/python/run-tests.sh -q >/dev/null
fi

burners=()
stop_burners() {
    for pid in "${burners[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
trap stop_burners EXIT
trap 'exit 130' INT TERM
for _ in 1 2; do
    sh -c 'while :; do :; done' &
    burners+=("$!")
done
echo "== $runs runs, beside two CPU burners (pids ${burners[*]})"

failed=0
for run in $(seq "$runs"); do
    log="$logs/run-$run.log"
    started=$SECONDS
    python_ok=yes
    if [ "$with_python" = yes ] &&
        ! (cd clients/python && .venv/bin/python -m pytest -q -p no:cacheprovider tests) >"$log" 2>&1; then
        python_ok=no
    fi
    if cargo nextest run --workspace --retries 0 --no-fail-fast "$@" >>"$log" 2>&1 &&
        [ "$python_ok" = yes ]; then
        echo "run $run/$runs: pass ($((SECONDS - started)) s)"
    else
        failed=$((failed + 1))
        echo "run $run/$runs: FAIL ($((SECONDS - started)) s, output in $log)"
        # nextest's summary ends the output: one line per failed test, e.g.
        #   FAIL [   1.234s] (12/345) lockd::it admin::metrics_count_...
        if [ "$python_ok" = no ]; then
            grep -E '^(FAILED|ERROR) ' "$log" | sed 's/^/    python: /' || echo "    python: failed (see $log)"
        fi
        summary=$(sed -n '/^ *Summary \[/,$p' "$log" |
            grep -E '^ *(FAIL|TIMEOUT|SIGSEGV|SIGABRT|SIGKILL|ABORT|LEAK-FAIL)' |
            sed -E 's/^ *([A-Z-]+) *\[[^]]*\] *(\([0-9]+\/[0-9]+\) *)?/\1 /' | sort -u || true)
        if [ -n "$summary" ]; then
            echo "$summary" | sed 's/^/    /'
        else
            echo "    (no failed test in the summary: the build or nextest itself failed; see $log)"
            tail -n 5 "$log" | sed 's/^/    /'
        fi
    fi
done
echo "$runs runs, $failed failed"
[ "$failed" -eq 0 ]
