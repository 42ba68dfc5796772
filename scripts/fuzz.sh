#!/usr/bin/env bash
# Fuzzes the frame decoder and request parser (fuzz/fuzz_targets/frames.rs) for N seconds
# (default 10). cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP lets the stable toolchain
# build them. New inputs go to fuzz/corpus/ (not committed); fuzz/seeds/ holds the seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
mkdir -p fuzz/corpus/frames
RUSTC_BOOTSTRAP=1 cargo fuzz run frames fuzz/corpus/frames fuzz/seeds/frames -- \
    -max_total_time="$seconds" -max_len=4096 -print_final_stats=1
