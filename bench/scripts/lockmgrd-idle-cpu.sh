#!/usr/bin/env bash
# Idle CPU of lockmgrd after a burst (issue 14: below 5% of a core ~100 ms after the last request).
# Starts LOCKMGRD on a private shm socket with one session holding a lock (heartbeats keep it
# alive, as an idle smbd node does), runs a burst of requests, then reads utime+stime from
# /proc/<pid>/stat over IDLE_S seconds, starting 100 ms after the burst.
# Usage: bench/scripts/lockmgrd-idle-cpu.sh LOCKMGRD LOCKMGRCTL [extra lockmgrd args...]
set -euo pipefail
LOCKMGRD=$1 LOCKMGRCTL=$2; shift 2
IDLE_S=${IDLE_S:-3}
dir=$(mktemp -d)
trap 'kill $hold_pid $d_pid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
head -c 32 /dev/urandom > "$dir/key"; chmod 600 "$dir/key"
"$LOCKMGRD" --transport shm --listen "$dir/s.sock" --cluster-key-file "$dir/key" "$@" &
d_pid=$!
for _ in $(seq 100); do [ -S "$dir/s.sock" ] && break; sleep 0.05; done
ctl() { "$LOCKMGRCTL" --transport shm --connect "$dir/s.sock" --cluster-key-file "$dir/key" "$@"; }
ctl hold --file 01 > "$dir/hold.out" &
hold_pid=$!
for _ in $(seq 100); do grep -q LOCKED "$dir/hold.out" 2>/dev/null && break; sleep 0.05; done
ticks() { awk '{print $14 + $15}' "/proc/$d_pid/stat"; }
hz=$(getconf CLK_TCK)
t0=$(ticks)
start=$(date +%s.%N)
for _ in $(seq 200); do ctl status > /dev/null; done
t1=$(ticks); burst_end=$(date +%s.%N)
sleep 0.1
t2=$(ticks); idle_start=$(date +%s.%N)
sleep "$IDLE_S"
t3=$(ticks); idle_end=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" -v hz="$hz" \
    -v s="$start" -v be="$burst_end" -v is="$idle_start" -v ie="$idle_end" 'BEGIN {
    printf "burst: %.1f%% of a core over %.2f s\n", 100 * (b - a) / hz / (be - s), be - s;
    printf "idle (from 100 ms after the burst, %.1f s): %.2f%% of a core\n", ie - is, 100 * (d - c) / hz / (ie - is);
}'
