#!/usr/bin/env bash
# CA vs non-CA CREATE/CLOSE in one run: starts the README's local cluster (replicated lockmgrd,
# two nodes, shares "data" and "ca"), runs bench/scripts/ca_create_bench.py against node 1,
# stops the cluster.   usage: bash bench/scripts/ca-bench.sh [ITERATIONS] [ROUNDS]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PY=${SMBD_PYTHON:-${SMB_PY_VENV:-/opt/clustersmb-venv}/bin/python}
(cd "$ROOT" && cargo build --release -q -p lockmgrd -p smbd)
LOG=$(mktemp)
bash "$ROOT/scripts/run-local-cluster.sh" >"$LOG" 2>&1 &
CLUSTER=$!
trap 'kill -TERM $CLUSTER 2>/dev/null; wait $CLUSTER 2>/dev/null; rm -f "$LOG"' EXIT
for _ in $(seq 1 300); do
    grep -q "Local cluster running" "$LOG" && break
    kill -0 $CLUSTER 2>/dev/null || { cat "$LOG"; exit 1; }
    sleep 1
done
grep -q "Local cluster running" "$LOG" || { cat "$LOG"; exit 1; }
PORT=$(sed -n 's/^  node1 *127.0.0.1:\([0-9]*\).*/\1/p' "$LOG")
USER_PASS=$(sed -n 's/^  user *\(.*\)$/\1/p' "$LOG")
USER=${USER_PASS%% / *}
PASS=${USER_PASS##* / }
"$PY" "$ROOT/bench/scripts/ca_create_bench.py" 127.0.0.1 "$PORT" "$USER" "$PASS" "${1:-2000}" "${2:-4}"
