#!/usr/bin/env bash
# Installs everything the test suite and the benchmarks need on a fresh Debian 12 machine.
# Idempotent: packages already present are not fetched again. Needs root (apt-get).
set -euo pipefail

APT_PACKAGES=(
    # real SMB clients and the Samba baseline
    samba smbclient samba-testsuite libnss-wrapper ctdb winbind
    # AF_XDP (xsk-rs bundles libxdp/libbpf), RDMA verbs and rdmacm
    clang libclang-dev llvm m4 make libelf-dev zlib1g-dev pkg-config cmake
    libibverbs-dev librdmacm-dev rdma-core ibverbs-providers
    # network namespaces for raw-Ethernet tests
    iproute2
    # python venv for the independent SMB client library
    python3-venv
    # the lock manager's coordination service (replica set, epochs) and protoc for its client
    etcd-server etcd-client protobuf-compiler
    # promtool (`promtool check metrics`) validates the /metrics endpoints in the tests
    prometheus
    # bindfs: per-node FUSE mounts of one directory, a cluster filesystem in miniature (each
    # node's inotify sees only changes made through its own mount) for the change-notify tests
    bindfs
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Python SMB client library (independent implementation) in a private venv.
VENV=${SMB_PY_VENV:-/opt/clustersmb-venv}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import smbprotocol' 2>/dev/null; then
    echo "install-deps: python venv with smbprotocol at $VENV"
    PY=$(command -v python3)
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q smbprotocol
fi
echo "install-deps: ok"
