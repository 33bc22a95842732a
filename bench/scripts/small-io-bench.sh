#!/bin/sh
# Server-side cost of 4 KiB WRITEs and of QUERY_DIRECTORY for two smbd binaries (an old and a
# new build), in alternating rounds of the same run, from smbd's request-duration histogram
# (small_io_bench.py says what each round does and prints).
#   bench/scripts/small-io-bench.sh OLD_SMBD NEW_SMBD [ROUNDS] [WRITES] [DIR_FILES] [LISTINGS]
# Defaults: 5 rounds, 5000 writes, 1000 files, 20 listings. Each round starts each binary
# afresh on a new share in /dev/shm (tmpfs, with user xattrs) and runs the client once; the
# order of the two binaries alternates between rounds. Python: $SMBD_PYTHON (smbprotocol),
# else /opt/clustersmb-venv/bin/python.
set -eu
OLD=$1
NEW=$2
ROUNDS=${3:-5}
WRITES=${4:-5000}
FILES=${5:-1000}
LISTINGS=${6:-20}
PY=${SMBD_PYTHON:-/opt/clustersmb-venv/bin/python}
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=$(mktemp -d /dev/shm/smallio.XXXXXX)
PID=
trap '[ -n "$PID" ] && kill $PID 2>/dev/null; rm -rf "$DIR"' EXIT
echo benchpw | "$NEW" passwd --users "$DIR/users" --password-stdin --uid "$(id -u)" --gid "$(id -g)" bench >/dev/null
free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
one() { # label binary
    rm -rf "$DIR/share"
    mkdir -p "$DIR/share"
    MPORT=$(free_port)
    cat > "$DIR/smbd.toml" <<TOML
[server]
listen = ["127.0.0.1:0"]
users = "$DIR/users"
metrics_listen = "127.0.0.1:$MPORT"
[[share]]
name = "data"
path = "$DIR/share"
TOML
    # (Removed first: the background job's redirection may truncate it only after the
    # wait below has read the previous run's banner.)
    rm -f "$DIR/log"
    "$2" --config "$DIR/smbd.toml" > "$DIR/log" 2>&1 &
    PID=$!
    # The banner's last line (metrics) comes after the listening lines.
    for _ in $(seq 100); do grep -q "smbd metrics on .*[0-9]$" "$DIR/log" && break; sleep 0.1; done
    PORT=$(sed -n 's/.*listening on .*:\([0-9]*\)$/\1/p' "$DIR/log" | head -1)
    printf '%s ' "$1"
    "$PY" "$HERE/small_io_bench.py" 127.0.0.1 "$PORT" "$MPORT" bench benchpw \
        "$WRITES" "$FILES" "$LISTINGS" || { cat "$DIR/log"; exit 1; }
    kill "$PID"
    wait "$PID" 2>/dev/null || true
    PID=
}
for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) -eq 1 ]; then
        one old "$OLD"
        one new "$NEW"
    else
        one new "$NEW"
        one old "$OLD"
    fi
done
