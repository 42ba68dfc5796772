#!/usr/bin/env bash
# The whole test suite, on any machine with Rust installed: installs what is missing, then runs
# formatting, clippy, the docs, the doc tests and every test. README gives this command, and
# .ci/run calls it, so the two cannot drift apart.
#
# What it installs when missing:
# - cargo-nextest, with `cargo install cargo-nextest --locked`;
# - the rustfmt and clippy components, with rustup;
# - Debian packages: strace (fsync.rs traces lockd's fsyncs), util-linux (unshare: the full-disk
#   test mounts a small tmpfs), openssl (tls_docs.rs runs docs/security.md's certificate
#   commands), chromium (dashboard.rs loads the page headless) and systemd (deploy.rs checks
#   the service unit with systemd-analyze verify). As root it
#   runs apt-get; otherwise it prints one line naming what to install and exits non-zero.
# - python3 with its venv module (Debian: python3 and python3-venv), for the Python client's
#   tests; clients/python/run-tests.sh then puts pytest and mypy from PyPI in a venv of its own.
#
# The test runner's summary is the last thing it prints: CI reads the closing lines.
set -euo pipefail
cd "$(dirname "$0")/.."

# Rust tools.
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "== installing cargo-nextest"
    cargo install cargo-nextest --locked
fi
for tool in fmt clippy; do
    if ! cargo "$tool" --version >/dev/null 2>&1; then
        component=$([ "$tool" = fmt ] && echo rustfmt || echo clippy)
        if ! command -v rustup >/dev/null 2>&1; then
            echo "scripts/test.sh: cargo $tool is missing and there is no rustup to install it; install the $component component of your Rust toolchain" >&2
            exit 1
        fi
        echo "== installing the $component component"
        rustup component add "$component"
    fi
done

# Debian packages.
missing=()
command -v strace >/dev/null 2>&1 || missing+=(strace)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "scripts/test.sh: missing Debian packages; install them first: sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    echo "== installing ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo doc -D warnings"
RUSTDOCFLAGS='-D warnings' cargo doc --no-deps --workspace --quiet
echo "== doc tests"
cargo test --workspace --doc --quiet

# The Python client before the Rust suite, so that nextest's summary stays the last output.
echo "== Python client (mypy --strict, pytest)"
bash clients/python/run-tests.sh

echo "== tests"
# No retries, whatever a config file says: a test that needs one is a bug.
cargo nextest run --workspace --retries 0
