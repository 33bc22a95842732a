#!/bin/sh
# Build smbbench, smbd and lockmgrd (release) and run every smb2.bench suite against every
# target. Needs root and Debian packages samba samba-testsuite libnss-wrapper ctdb.
# Usage: bench/scripts/smbbench-all.sh [DURATION_S] [extra smbbench args...]
set -eu
cd "$(dirname "$0")/../.."
duration=${1:-10}
[ $# -gt 0 ] && shift
target_dir=${CARGO_TARGET_DIR:-target}
cargo build --release -p lockbench --bin smbbench -p smbd -p lockmgrd
for suite in echo path-contention-shared oplock1; do
    "$target_dir/release/smbbench" --suite "$suite" --targets samba,smbd,samba-ctdb,cluster \
        --duration "$duration" "$@"
done
