#!/usr/bin/env bash
# A local all-active cluster: a replicated lock manager (two lockmgrd replicas over shared
# memory, primary + standby, epochs in a private etcd) and two smbd nodes serving one directory
# (standing in for the cluster filesystem) through it.
#
#   bash scripts/run-local-cluster.sh            # run until Ctrl-C / SIGTERM
#   bash scripts/run-local-cluster.sh --check    # start, smbclient ls on both nodes,
#                                                # lockmgrctl status, SIGKILL the primary
#                                                # lockmgrd, check both nodes again through the
#                                                # standby, stop (exit status = result)
#
# Environment:
#   PORT1, PORT2     node ports on 127.0.0.1 (default 4451, 4452)
#   DEMO_USER        the demo account's name (default demo); its password is generated at
#                    start and printed (DEMO_PASS sets one instead)
#   DEMO_UID, DEMO_GID  the Unix ids the demo user's file operations run as (default 30001 /
#                    30000 when run as root, else your own); the share directory is theirs
#   USERS_FILE       use this users file (`smbd passwd` format) instead of the demo account
#   BIN_DIR          use lockmgrd, lockmgrctl and smbd from this directory and do not build
#   CARGO_TARGET_DIR where cargo builds (default: target/ in the repository)
#   KEEP_DIR=1       keep the temporary directory on exit (logs, configs)
#   REPLICAS=1       one lockmgrd, no etcd (default 2 when etcd is installed)
#   ETCD_PORT        etcd's client port on 127.0.0.1 (default 23790; peer port + 1)
set -euo pipefail

MODE=run
case "${1:-}" in
    --check) MODE=check ;;
    "") ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT1="${PORT1:-4451}"
PORT2="${PORT2:-4452}"
ETCD_PORT="${ETCD_PORT:-23790}"
if [[ -z "${REPLICAS:-}" ]]; then
    if command -v etcd >/dev/null; then
        REPLICAS=2
    else
        echo "etcd not installed (apt-get install etcd-server): one lockmgrd, no standby" >&2
        REPLICAS=1
    fi
fi
DEMO_USER="${DEMO_USER:-demo}"
# No fixed demo password: a fresh one each start.
DEMO_PASS="${DEMO_PASS:-$(head -c 12 /dev/urandom | base64 | tr -d '/+=')}"
if [[ "$(id -u)" == 0 ]]; then
    DEMO_UID="${DEMO_UID:-30001}"
    DEMO_GID="${DEMO_GID:-30000}"
else
    DEMO_UID="${DEMO_UID:-$(id -u)}"
    DEMO_GID="${DEMO_GID:-$(id -g)}"
fi

if [[ -n "${BIN_DIR:-}" ]]; then
    BIN="$BIN_DIR"
else
    echo "building lockmgrd and smbd (release)..."
    (cd "$REPO" && cargo build --release -p lockmgrd -p smbd)
    BIN="${CARGO_TARGET_DIR:-$REPO/target}/release"
fi
for b in lockmgrd lockmgrctl smbd; do
    [[ -x "$BIN/$b" ]] || { echo "missing $BIN/$b" >&2; exit 1; }
done

DIR="$(mktemp -d -t clustersmb.XXXXXX)"
PIDS=()

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    # Stop what we started, by PID, nodes first so they leave lockmgrd in order.
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${PIDS[i]}" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ "${KEEP_DIR:-}" == 1 ]]; then
        echo "kept $DIR"
    else
        rm -rf "$DIR"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$DIR/share" "$DIR/share-ca"
head -c 32 /dev/urandom >"$DIR/cluster.key"
chmod 600 "$DIR/cluster.key"
if [[ -n "${USERS_FILE:-}" ]]; then
    cp "$USERS_FILE" "$DIR/users"
    chmod 600 "$DIR/users"
else
    printf '%s\n' "$DEMO_PASS" | "$BIN/smbd" passwd --users "$DIR/users" \
        --uid "$DEMO_UID" --gid "$DEMO_GID" --password-stdin "$DEMO_USER"
fi
echo "hello from the cluster filesystem" >"$DIR/share/README.txt"
# File operations run as the SMB user's Unix ids, so the share is theirs (and the temporary
# directory above it traversable).
chmod 711 "$DIR"
if [[ "$(id -u)" == 0 ]]; then
    chown -R "$DEMO_UID:$DEMO_GID" "$DIR/share" "$DIR/share-ca"
fi
cat >"$DIR/client.conf" <<EOF
[global]
client min protocol = SMB2_02
client max protocol = SMB3_11
EOF
SOCK="$DIR/lockmgr.sock"
SOCK_B="$DIR/lockmgr-b.sock"

# Waits (tenths of a second) until FILE shows PATTERN while PID lives; else shows LOG
# (default FILE) and stops the script.
wait_log() { # tenths file pattern pid what [log]
    for _ in $(seq "$1"); do
        grep -q "$3" "$2" 2>/dev/null && return 0
        kill -0 "$4" 2>/dev/null || break
        sleep 0.1
    done
    echo "$5 did not start:" >&2
    cat "${6:-$2}" >&2
    exit 1
}

REPL_A=()
REPL_B=()
if [[ "$REPLICAS" == 2 ]]; then
    etcd --name local --data-dir "$DIR/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
        --initial-cluster "local=http://127.0.0.1:$((ETCD_PORT + 1))" >"$DIR/etcd.log" 2>&1 &
    PIDS+=($!)
    ETCD_PID=$!
    wait_log 150 "$DIR/etcd.log" "ready to serve client requests" "$ETCD_PID" etcd
    REPL=(--etcd "http://127.0.0.1:$ETCD_PORT" --cluster-name local --failover-ms 100)
    REPL_A=(--replica-name lm-a "${REPL[@]}")
    REPL_B=(--replica-name lm-b "${REPL[@]}")
fi

"$BIN/lockmgrd" --transport shm --listen "$SOCK" --cluster-key-file "$DIR/cluster.key" \
    "${REPL_A[@]}" >"$DIR/lockmgrd.log" 2>&1 &
PIDS+=($!)
LOCKMGRD_A=$!
# The socket file appears a moment before lockmgrd listens on it: wait for its log line.
wait_log 150 "$DIR/lockmgrd.log" "lockmgrd listening" "$LOCKMGRD_A" lockmgrd
CONNECT="$SOCK"
if [[ "$REPLICAS" == 2 ]]; then
    "$BIN/lockmgrd" --transport shm --listen "$SOCK_B" --cluster-key-file "$DIR/cluster.key" \
        "${REPL_B[@]}" >"$DIR/lockmgrd-b.log" 2>&1 &
    PIDS+=($!)
    LOCKMGRD_B=$!
    wait_log 150 "$DIR/lockmgrd-b.log" "recorded as standby" "$LOCKMGRD_B" "the standby lockmgrd"
    CONNECT="$SOCK,$SOCK_B"
fi

start_node() {
    local n=$1 port=$2
    cat >"$DIR/node$n.toml" <<EOF
[server]
netbios_name = "NODE$n"
users = "$DIR/users"
# Both nodes serve one filesystem: same file ids on both.
cluster_fs_id = "0x636c7573"

[[share]]
name = "data"
path = "$DIR/share"

# Continuously available: persistent handles survive a node's death and a lockmgrd failover.
[[share]]
name = "ca"
path = "$DIR/share-ca"
continuous_availability = true

[lockmgr]
transport = "shm"
connect = "$CONNECT"
cluster_key_file = "$DIR/cluster.key"
node_name = "node$n"
EOF
    NO_COLOR=1 "$BIN/smbd" --config "$DIR/node$n.toml" --listen "127.0.0.1:$port" \
        >"$DIR/node$n.out" 2>"$DIR/node$n.log" &
    local pid=$!
    PIDS+=("$pid")
    wait_log 100 "$DIR/node$n.out" "smbd listening" "$pid" "node$n" "$DIR/node$n.log"
}
start_node 1 "$PORT1"
start_node 2 "$PORT2"

CTL=("$BIN/lockmgrctl" --transport shm --connect "$SOCK" --cluster-key-file "$DIR/cluster.key" status)

check_nodes() {
    for port in "$PORT1" "$PORT2"; do
        out="$(smbclient //127.0.0.1/data -p "$port" -s "$DIR/client.conf" \
            -U "$DEMO_USER%$DEMO_PASS" -c ls 2>&1)" || { echo "$out" >&2; exit 1; }
        if ! grep -q README.txt <<<"$out" || grep -q NT_STATUS_ <<<"$out"; then
            echo "smbclient ls on port $port failed:" >&2
            echo "$out" >&2
            exit 1
        fi
        echo "node on port $port: ls ok"
        # Secure by default: no anonymous access.
        if smbclient //127.0.0.1/data -p "$port" -s "$DIR/client.conf" -N -c ls >/dev/null 2>&1; then
            echo "anonymous smbclient -N was let in on port $port" >&2
            exit 1
        fi
        echo "node on port $port: anonymous refused"
    done
    status="$("${CTL[@]}")"
    echo "$status"
    grep -q node1 <<<"$status" && grep -q node2 <<<"$status" || {
        echo "lockmgrctl status does not list both nodes" >&2
        exit 1
    }
}

if [[ "$MODE" == check ]]; then
    check_nodes
    if [[ "$REPLICAS" == 2 ]]; then
        # The lock manager must survive its own death: SIGKILL the primary; the standby takes
        # over and both nodes carry on through it with their sessions.
        echo "SIGKILL of the primary lockmgrd (pid $LOCKMGRD_A)"
        kill -KILL "$LOCKMGRD_A"
        wait "$LOCKMGRD_A" 2>/dev/null || true
        wait_log 150 "$DIR/lockmgrd-b.log" "promoted" "$LOCKMGRD_B" "the standby's takeover"
        CTL=("$BIN/lockmgrctl" --transport shm --connect "$SOCK_B" --cluster-key-file "$DIR/cluster.key" status)
        check_nodes
        grep -q "role primary" <<<"$status" || { echo "the standby is not primary" >&2; exit 1; }
        grep -q "session resumed" "$DIR/lockmgrd-b.log" || {
            echo "no node resumed its session on the standby" >&2
            exit 1
        }
    fi
    echo "CHECK OK"
    exit 0
fi

cat <<EOF

Local cluster running (temporary directory $DIR):
  lockmgrd  shm socket $SOCK               (log: $DIR/lockmgrd.log)
  standby   $( [[ "$REPLICAS" == 2 ]] && echo "shm socket $SOCK_B (log: $DIR/lockmgrd-b.log); etcd 127.0.0.1:$ETCD_PORT" || echo "none (REPLICAS=1)")
  node1     127.0.0.1:$PORT1                   (log: $DIR/node1.log)
  node2     127.0.0.1:$PORT2                   (log: $DIR/node2.log)
  share     //127.0.0.1/data -> $DIR/share
  CA share  //127.0.0.1/ca   -> $DIR/share-ca (persistent handles)
  user      $DEMO_USER / $DEMO_PASS

Connect to each node:
  smbclient //127.0.0.1/data -p $PORT1 -s $DIR/client.conf -U '$DEMO_USER%$DEMO_PASS'
  smbclient //127.0.0.1/data -p $PORT2 -s $DIR/client.conf -U '$DEMO_USER%$DEMO_PASS'

Lock manager view (nodes, opens, byte-range locks, waiters, breaks):
  ${CTL[*]}

$( [[ "$REPLICAS" == 2 ]] && echo "Fail the lock manager over: kill -9 $LOCKMGRD_A (the nodes resume on the standby)." )
Ctrl-C stops every process and removes $DIR.
EOF

# Wait until a signal arrives or a process dies (a lockmgrd replica may die: try
# `kill -9 $LOCKMGRD_A` and watch the nodes carry on through the standby).
WATCH=("${PIDS[@]}")
if [[ "$REPLICAS" == 2 ]]; then
    WATCH=()
    for pid in "${PIDS[@]}"; do
        [[ "$pid" == "$LOCKMGRD_A" || "$pid" == "$LOCKMGRD_B" ]] || WATCH+=("$pid")
    done
fi
while true; do
    for pid in "${WATCH[@]}"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "process $pid exited; stopping the cluster" >&2
            exit 1
        fi
    done
    sleep 1 &
    wait $! || true
done
