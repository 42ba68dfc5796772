#!/usr/bin/env bash
# Type-checks the Python client (mypy --strict) and runs its tests against a real lockd.
#
# Works from any directory, on a machine with only Rust and python3: it makes a venv in
# clients/python/.venv (or $LOCKD_PY_VENV) with pytest and mypy from PyPI, installs the package
# into it from this directory (building a wheel), installs the openssl command for the TLS
# tests when it is missing (apt-get, as root), builds lockd unless $LOCKD_BIN names one, and
# exits non-zero on any failure. Extra arguments go to pytest (e.g. -k cluster).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"
venv="${LOCKD_PY_VENV:-$here/.venv}"

step() { printf '\n== %s\n' "$*"; }

if ! command -v openssl >/dev/null 2>&1; then
    step "installing openssl (for the TLS tests)"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl
    else
        echo "the TLS tests need the openssl command; install it (apt-get install openssl)" >&2
        exit 1
    fi
fi

if [ ! -x "$venv/bin/python" ]; then
    step "creating $venv"
    "$python" -m venv "$venv"
fi
py="$venv/bin/python"
if ! "$py" -c 'import pytest, mypy' >/dev/null 2>&1; then
    step "installing pytest and mypy"
    "$py" -m pip install -q --disable-pip-version-check pytest mypy
fi

step "installing the lockd package from $here"
# A fresh wheel each run, so that the tests see the package as users get it. The build backend
# (setuptools) comes from PyPI; without network, fall back to the venv's own setuptools.
if ! "$py" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall "$here"; then
    "$py" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall \
        --no-build-isolation "$here"
fi

if [ -z "${LOCKD_BIN:-}" ]; then
    step "building lockd"
    (cd "$repo" && cargo build -p lockd --bin lockd)
    target="${CARGO_TARGET_DIR:-$repo/target}"
    case "$target" in /*) ;; *) target="$repo/$target" ;; esac
    export LOCKD_BIN="$target/debug/lockd"
fi
[ -x "$LOCKD_BIN" ] || { echo "no lockd binary at $LOCKD_BIN" >&2; exit 1; }

step "mypy --strict (the package, then the tests)"
(cd "$here" && "$venv/bin/mypy" --strict --cache-dir "$here/.mypy_cache" src/lockd)
(cd "$here" && "$venv/bin/mypy" --strict --cache-dir "$here/.mypy_cache" tests)

step "pytest"
cd "$here"
"$py" -m pytest -q -p no:cacheprovider tests "$@"
