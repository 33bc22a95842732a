#!/usr/bin/env bash
# Short libFuzzer run of every cargo-fuzz target in the repository; fails on any crash, panic,
# violated property, timeout or out-of-memory.
#
# Usage: bash scripts/fuzz-smoke.sh [TARGET...]
#   FUZZ_SECONDS  seconds of fuzzing per target (default 20)
#   CARGO_TARGET_DIR  build directory shared by all fuzz packages (default target/fuzz; every
#                 target name is unique in the repository, so the binaries cannot collide)
#
# Runs on the stable toolchain: RUSTC_BOOTSTRAP=1 unlocks the -Z sanitizer flags cargo-fuzz
# passes. New inputs go to a scratch directory, so the checked-in corpora (replayed by
# `cargo test`) only change when someone copies a find there on purpose. Crash inputs land in
# <crate>/fuzz/artifacts/<target>/ (ignored by git): add them to the corpus with the fix.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# Every fuzz target: "<crate dir holding fuzz/> <target>". Add new targets here.
TARGETS=(
    "lockmgr/proto decode_frame"
    "lockmgr/transport reliable_datagram"
    "lockmgr/transport eth_frames"
    "lockmgr/transport shm_hello"
    "lockmgr/rdma rdma_header"
    "lockmgr/rdma rdma_hello"
    "lockmgr/daemon lockmgrd_config"
    "lockmgr/replica replica_config"
    "lockmgr/replica replica_snapshot"
    "smbd/proto decode"
    "smbd/proto security_descriptor"
    "smbd/proto dfs_referral"
    "smbd/auth ntlm_step"
    "smbd/auth decrypt"
    "smbd/auth user_db"
    "smbd/auth ntlm_unseal"
    "smbd/rpc rpc_pipe"
    "smbd/rpc rpc_witness"
    "smbd/server smbd_config"
    "smbd/server smbd_conn"
    "smbd/server inotify_events"
    "smbd/server witness_peers"
    "smbd/server dos_xattr"
    "smbd/server public_ip"
    "smbdirect smbdirect_decode"
    "smbdirect smbdirect_conn"
    "metrics metrics_http_request"
)

FUZZ_SECONDS=${FUZZ_SECONDS:-20}
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/fuzz}
export CARGO_TERM_COLOR=never

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

# A target list that forgot a fuzz package would silently skip it: compare with the tree.
listed=$(printf '%s\n' "${TARGETS[@]}" | awk '{print $1}' | sort -u)
found=$(find . -path './target*' -prune -o -path '*/fuzz/Cargo.toml' -print |
    grep -v '/fuzz/target/' | sed 's|^\./||; s|/fuzz/Cargo.toml$||' | sort -u)
if [ "$listed" != "$found" ]; then
    echo "fuzz packages and TARGETS disagree:" >&2
    diff <(echo "$listed") <(echo "$found") >&2 || true
    exit 1
fi

selected=("$@")
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
start=$SECONDS
for entry in "${TARGETS[@]}"; do
    read -r crate target <<<"$entry"
    if [ ${#selected[@]} -gt 0 ] && [[ ! " ${selected[*]} " =~ " $target " ]]; then
        continue
    fi
    corpus=$ROOT/$crate/fuzz/corpus/$target
    if [ ! -d "$corpus" ]; then
        echo "$crate: no corpus at $corpus" >&2
        failed+=("$target")
        continue
    fi
    mkdir -p "$scratch/$target"
    echo "=== $crate: $target (${FUZZ_SECONDS}s)"
    t0=$SECONDS
    # -timeout: a single input running this long is a hang; -rss_limit_mb: memory blow-up.
    if (cd "$ROOT/$crate" && cargo fuzz run "$target" "$scratch/$target" "$corpus" -- \
        -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$scratch/$target.log" 2>&1); then
        echo "    ok: $(grep -m1 -o 'Done [0-9]* runs in [0-9]* second(s)' "$scratch/$target.log" || true)" \
            "($((SECONDS - t0))s incl. build)"
    else
        echo "    FAILED ($((SECONDS - t0))s); log tail:" >&2
        tail -n 40 "$scratch/$target.log" >&2
        failed+=("$target")
    fi
done

echo
echo "fuzz smoke: $((SECONDS - start))s total"
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED targets: ${failed[*]}" >&2
    exit 1
fi
echo "all targets passed"
