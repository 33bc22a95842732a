#!/usr/bin/env bash
# The long repetitions that CI does not run on every change (the guide's second command): run
# them before resolving an issue that touches lock semantics or replication, and put the
# figures in the closing note. Exit status: non-zero if any run found a violation.
#
#   bash scripts/long-runs.sh            # about 20 minutes on 2 vCPUs
#   SIM_SEEDS=20000 PROPTEST_CASES=20000 bash scripts/long-runs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { echo; echo "=== $* ==="; }

step "replication: simulated failovers, history-checked (SIM_SEEDS=${SIM_SEEDS:=5000})"
SIM_SEEDS=$SIM_SEEDS cargo test --release -p lockmgr-replica --test sim -- --nocapture --test-threads=1

step "replicated lockmgrd: ${FAILOVERS:=100} primary SIGKILLs under load, history-checked (FAILOVER_MS=${FAILOVER_MS:=300})"
FAILOVERS=$FAILOVERS FAILOVER_MS=$FAILOVER_MS cargo test --release -p lockmgrd --test replication \
    repeated_primary_kills -- --nocapture --test-threads=1

step "replicated lockmgrd: ${LOADED_SECS:=600} s of locking under CPU hogs, no spurious failover (default failover timeout)"
LOADED_SECS=$LOADED_SECS cargo test --release -p lockmgrd --test replication \
    steady_locking_under_cpu_load -- --nocapture --test-threads=1

step "lock engine against its model (PROPTEST_CASES=${PROPTEST_CASES:=5000})"
PROPTEST_CASES=$PROPTEST_CASES cargo test --release -p lockmgr-engine --test model -- --test-threads=2

step "wire codec properties (PROPTEST_CASES=$PROPTEST_CASES)"
PROPTEST_CASES=$PROPTEST_CASES cargo test --release -p lockmgr-proto --test proptest -- --test-threads=2

echo
echo "long-runs: all passed"
