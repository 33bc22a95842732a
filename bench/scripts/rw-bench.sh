#!/bin/sh
# Large READ/WRITE throughput of an smbd binary on loopback with smbclient (SMB3, 8 MiB
# multi-credit I/O): put then get of a SIZE_MIB file, best of RUNS, in MiB/s, and the smbd
# CPU time per GiB (less sensitive to other load on the machine than the rate).
#   bench/scripts/rw-bench.sh [SMBD_BIN] [SIZE_MIB] [RUNS]
# Environment: SMBCLIENT_OPTS (e.g. "--option=clientsigning=required" or "-e" to seal).
set -eu
SMBD=${1:-target/release/smbd}
SIZE=${2:-1024}
RUNS=${3:-3}
DIR=$(mktemp -d /dev/shm/rwbench.XXXXXX)
trap 'kill $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
mkdir -p "$DIR/share"
echo "bench:benchpw" > "$DIR/users"
cat > "$DIR/smbd.toml" <<TOML
[server]
listen = ["127.0.0.1:0"]
users = "$DIR/users"
[[share]]
name = "data"
path = "$DIR/share"
TOML
"$SMBD" --config "$DIR/smbd.toml" > "$DIR/log" 2>&1 &
PID=$!
for _ in $(seq 50); do grep -q "listening on" "$DIR/log" && break; sleep 0.1; done
PORT=$(sed -n 's/.*listening on .*:\([0-9]*\)$/\1/p' "$DIR/log" | head -1)
head -c $((SIZE * 1048576)) /dev/urandom > "$DIR/src"
cpu() { # smbd user+system CPU in clock ticks
    awk '{print $14 + $15}' "/proc/$PID/stat"
}
run() { # op local remote; prints MiB/s and smbd CPU ms per GiB
    c0=$(cpu)
    s=$(date +%s.%N)
    smbclient //127.0.0.1/data -p "$PORT" -U bench%benchpw -m SMB3 ${SMBCLIENT_OPTS:-} \
        -c "$1 $2 $3" > "$DIR/out" 2>&1 || { cat "$DIR/out"; exit 1; }
    e=$(date +%s.%N)
    c1=$(cpu)
    echo "$s $e $c0 $c1" | awk -v m="$SIZE" -v hz="$(getconf CLK_TCK)" \
        '{printf "%.0f %.0f\n", m / ($2 - $1), ($4 - $3) * 1000 / hz * 1024 / m}'
}
best_put=0; best_get=0; cpu_put=999999; cpu_get=999999
for _ in $(seq "$RUNS"); do
    set -- $(run put "$DIR/src" f)
    [ "$1" -gt "$best_put" ] && best_put=$1
    [ "$2" -lt "$cpu_put" ] && cpu_put=$2
    set -- $(run get f "$DIR/dst")
    [ "$1" -gt "$best_get" ] && best_get=$1
    [ "$2" -lt "$cpu_get" ] && cpu_get=$2
    cmp -s "$DIR/src" "$DIR/dst" || { echo "MISMATCH after get"; exit 1; }
    cmp -s "$DIR/src" "$DIR/share/f" || { echo "MISMATCH after put"; exit 1; }
done
echo "put(WRITE) ${best_put} MiB/s ${cpu_put} smbd-CPU-ms/GiB  get(READ) ${best_get} MiB/s ${cpu_get} smbd-CPU-ms/GiB  (${SIZE} MiB, best of $RUNS)"
