#!/usr/bin/env bash
# Runs every test of the project, as CI does. Installs what it needs first (apt packages, python venv).
# Usage: bash scripts/test-all.sh
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

export CARGO_TERM_COLOR=never
export SMB_PY_VENV=${SMB_PY_VENV:-/opt/clustersmb-venv}
export SMBD_PYTHON=${SMBD_PYTHON:-$SMB_PY_VENV/bin/python}

step() { echo; echo "=== $* ==="; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "module import cycles (no module imports its importer)"
python3 scripts/check-module-cycles.py --self-test

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test --workspace"
cargo test --workspace -- --test-threads=2

step "fuzz smoke: every cargo-fuzz target for a few seconds (incl. smbd's message-sequence target)"
FUZZ_SECONDS=${FUZZ_SECONDS:-5} bash scripts/fuzz-smoke.sh

if [ -f hw-tests/run-softroce.sh ]; then
    step "soft-RoCE tests under qemu"
    bash hw-tests/run-softroce.sh
fi
echo
echo "test-all: all steps passed"
