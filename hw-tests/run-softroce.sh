#!/usr/bin/env bash
# Soft-RoCE (rdma_rxe) end-to-end tests of the lockmgr RDMA transport.
#
# The host kernel may have no RDMA at all, so the tests run in a throw-away qemu guest (TCG)
# booting Debian's stock kernel from an initramfs: rdma_rxe on a dummy netdev gives rxe0, and
# the rdma-suite binary built here runs against it. Usage, from the repository root:
#
#   bash hw-tests/run-softroce.sh
#
# Environment:
#   CI=true                 missing capabilities (qemu, kernel) are failures instead of skips
#   CLUSTERSMB_HW_CACHE     download/unpack cache (default /var/cache/clustersmb-hw)
#   SOFTROCE_TIMEOUT        seconds the guest may run (default 400)
#   SOFTROCE_PROFILE        cargo profile for the test binary (default release)
#   SOFTROCE_CIFS           1 (default): build cifs.ko with SMB Direct for the guest kernel and
#                           run the kernel-client tests (rdma-suite --cifs: the SMB Direct mount;
#                           --ca-failover: ping_pong on a CA share across a lockmgrd primary
#                           kill, with ctdb's ping_pong); a failure to
#                           build it fails the run. 0 leaves that test out (local runs only).
#   RDMA_SUITE_LOG, SMBDIRECTD_LOG
#                           tracing filters passed to rdma-suite (and the smbd in it) and
#                           smbdirectd in the guest, e.g. SMBDIRECTD_LOG=debug
#   CARGO_TARGET_DIR        as for cargo
#
# Exit status: 0 all tests passed (or skipped outside CI), 1 otherwise.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${CLUSTERSMB_HW_CACHE:-/var/cache/clustersmb-hw}
TIMEOUT=${SOFTROCE_TIMEOUT:-400}
PROFILE=${SOFTROCE_PROFILE:-release}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
ARCH_LIB=/usr/lib/x86_64-linux-gnu

log() { echo "run-softroce: $*" >&2; }

# A missing capability: failure in CI, a clear skip elsewhere.
unavailable() {
    if [ "${CI:-}" = "true" ]; then
        echo "run-softroce: FAILED (CI): $*" >&2
        exit 1
    fi
    echo "run-softroce: SKIP: $*" >&2
    exit 0
}

fail() {
    echo "run-softroce: FAILED: $*" >&2
    exit 1
}

if [ "$(uname -m)" != "x86_64" ]; then
    unavailable "this runner boots an x86_64 guest; host is $(uname -m)"
fi
if [ "$(id -u)" != "0" ]; then
    unavailable "needs root (apt-get, cache in $CACHE)"
fi
command -v apt-get >/dev/null || unavailable "needs a Debian-like host with apt-get"

export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" = 0 ]; then
        apt-get update -qq >&2 || log "apt-get update failed; using existing lists"
        APT_UPDATED=1
    fi
}

# Installs the packages that are not installed yet. Never lets apt remove anything.
apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    apt_update_once
    log "installing ${missing[*]}"
    apt-get install -y -qq --no-remove --no-install-recommends "${missing[@]}" >&2
}

mkdir -p "$CACHE/debs"
# apt-get download runs as _apt when it can; let it write into the cache.
chmod 0755 "$CACHE" "$CACHE/debs" 2>/dev/null || true

# ---- host packages: build (bindgen against libibverbs) and guest contents -----------------------
apt_install rdma-core ibverbs-providers libibverbs-dev librdmacm-dev pkg-config clang libclang-dev \
    busybox-static cpio kmod iproute2 ||
    unavailable "cannot install host packages (rdma-core, busybox-static, ...)"

# ---- qemu ---------------------------------------------------------------------------------------
QEMU=""
QEMU_FW=(-L /usr/share/seabios -L /usr/share/qemu)
if command -v qemu-system-x86_64 >/dev/null; then
    QEMU=$(command -v qemu-system-x86_64)
elif apt_install qemu-system-x86 2>/dev/null; then
    QEMU=$(command -v qemu-system-x86_64)
else
    # Some images carry a backported qemu-utils that Breaks the distribution's
    # qemu-system-common; unpack qemu-system-x86 privately instead of replacing it.
    log "qemu-system-x86 not installable normally; unpacking it into $CACHE/qemu"
    apt_install seabios ipxe-qemu qemu-system-data libslirp0 libfdt1 libcapstone4 libpmem1 \
        liburing2 libspice-server1 libvdeplug2 libaio1 libjpeg62-turbo libpng16-16 libnuma1 \
        libusb-1.0-0 libusbredirparser1 libfuse3-3 libgbm1 libepoxy0 libvirglrenderer1 ||
        unavailable "cannot install qemu's runtime libraries"
    if [ ! -x "$CACHE/qemu/usr/bin/qemu-system-x86_64" ]; then
        apt_update_once
        (cd "$CACHE/debs" && apt-get download qemu-system-x86 qemu-system-common >&2) ||
            unavailable "cannot download qemu-system-x86"
        # Unpacked beside the cache and renamed into place: an unpack cut short (a full disk)
        # must not leave a truncated qemu that later runs find and take for the real one.
        rm -rf "$CACHE/qemu" "$CACHE/qemu.partial"
        mkdir -p "$CACHE/qemu.partial"
        for d in "$CACHE"/debs/qemu-system-x86_*.deb "$CACHE"/debs/qemu-system-common_*.deb; do
            dpkg -x "$d" "$CACHE/qemu.partial" || unavailable "cannot unpack $d"
        done
        mv "$CACHE/qemu.partial" "$CACHE/qemu"
    fi
    QEMU=$CACHE/qemu/usr/bin/qemu-system-x86_64
fi
"$QEMU" --version >/dev/null 2>&1 || unavailable "qemu does not run: $("$QEMU" --version 2>&1 | head -3)"
log "qemu: $("$QEMU" --version | head -1)"

# ---- guest kernel -------------------------------------------------------------------------------
apt_update_once
KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$KPKG" ] || unavailable "apt offers no linux-image-amd64 (apt-cache policy linux-image-amd64)"
KVER=${KPKG#linux-image-}
KROOT=$CACHE/kernel-$KVER
if [ ! -f "$KROOT/boot/vmlinuz-$KVER" ]; then
    log "fetching $KPKG"
    (cd "$CACHE/debs" && apt-get download "$KPKG" >&2) || unavailable "cannot download $KPKG"
    rm -rf "$KROOT.tmp"
    mkdir -p "$KROOT.tmp"
    dpkg -x "$CACHE"/debs/"${KPKG}"_*.deb "$KROOT.tmp"
    depmod -b "$KROOT.tmp" "$KVER"
    rm -rf "$KROOT"
    mv "$KROOT.tmp" "$KROOT"
fi

# A primary and a standby lockmgrd replicating over RDMA (rdma-suite --replication) keep their
# epochs in etcd.
apt_install etcd-server || fail "cannot install etcd-server (the replicated lockmgrd's epochs)"
ETCD_BIN=$(command -v etcd) || fail "etcd-server installed no etcd"
REPL_ARG="--replication /usr/local/bin/lockmgrd,$ETCD_BIN"

# ---- the kernel SMB client with SMB Direct -------------------------------------------------------
# Debian builds cifs.ko without CONFIG_CIFS_SMB_DIRECT; the suite's kernel-client test needs one
# built from the same kernel version's source and headers (cached per version).
CIFS=${SOFTROCE_CIFS:-1}
CIFS_KO=""
CIFS_ARG=""
if [ "$CIFS" = 1 ]; then
    apt_install gcc-12 make xz-utils ||
        fail "cannot install the kernel module build tools (gcc-12, make, xz-utils)"
    CIFS_KO=$(bash "$ROOT/hw-tests/build-cifs-rdma.sh" "$KVER" "$CACHE") ||
        fail "cannot build cifs.ko with SMB Direct for $KVER (hw-tests/build-cifs-rdma.sh)"
    log "cifs.ko with SMB Direct: $CIFS_KO"
    # The kernel client's ping_pong across a lock manager failover also needs etcd (epochs of
    # the replicated lockmgrd) and CTDB's ping_pong in the guest.
    apt_install ctdb || fail "cannot install ctdb (ping_pong)"
    PING_PONG_BIN=$(command -v ping_pong) || fail "ctdb installed no ping_pong"
    CIFS_ARG="--cifs --ca-failover /usr/local/bin/lockmgrd,$ETCD_BIN,$PING_PONG_BIN"
fi

# ---- test binaries ------------------------------------------------------------------------------
# rdma-suite (its own tests plus the transport conformance scenarios), lockbench, which the
# suite runs once over rdma as a functional check, and smbdirectd, the SMB Direct proxy the suite
# puts between an rdma_cm initiator and smbd.
log "building rdma-suite, lockbench and smbdirectd ($PROFILE)"
(cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --profile "$PROFILE" -p hw-tests --bin rdma-suite \
    -p lockbench --bin lockbench -p smbdirect --bin smbdirectd -p lockmgrd --bin lockmgrd >&2) ||
    fail "cargo build failed"
case "$PROFILE" in
    dev) BIN_DIR=$TARGET_DIR/debug ;;
    *) BIN_DIR=$TARGET_DIR/$PROFILE ;;
esac
BIN=$BIN_DIR/rdma-suite
BENCH_BIN=$BIN_DIR/lockbench
SDD_BIN=$BIN_DIR/smbdirectd
LOCKMGRD_BIN=$BIN_DIR/lockmgrd
[ -x "$BIN" ] || fail "no binary at $BIN"
[ -x "$BENCH_BIN" ] || fail "no binary at $BENCH_BIN"
[ -x "$SDD_BIN" ] || fail "no binary at $SDD_BIN"
[ -x "$LOCKMGRD_BIN" ] || fail "no binary at $LOCKMGRD_BIN"

# ---- initramfs ----------------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/softroce.XXXXXX")
QEMU_PID=""
cleanup() {
    if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill -9 "$QEMU_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
R=$WORK/root
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc/libibverbs.d,proc,sys,dev,tmp,modules,run}

# Copies files and every shared library they need, at the same paths.
copy_with_libs() {
    local f lib
    for f in "$@"; do
        [ -e "$f" ] || fail "missing $f"
        mkdir -p "$R$(dirname "$f")"
        cp -L "$f" "$R$f"
        for lib in $(ldd "$f" 2>/dev/null | awk '/=> \// {print $3} /^\t\/.*ld-linux/ {print $1}'); do
            if [ ! -e "$R$lib" ]; then
                mkdir -p "$R$(dirname "$lib")"
                cp -L "$lib" "$R$lib"
            fi
        done
    done
}

cp /bin/busybox "$R/bin/busybox"
RDMA_TOOL=$(command -v rdma || echo /sbin/rdma)
PROVIDER=$(ls "$ARCH_LIB"/libibverbs/librxe-rdmav*.so 2>/dev/null | head -1)
[ -n "$PROVIDER" ] || fail "rxe verbs provider not found (ibverbs-providers)"
copy_with_libs "$RDMA_TOOL" "$PROVIDER" "$BIN" "$BENCH_BIN" "$SDD_BIN" "$LOCKMGRD_BIN" "$ETCD_BIN"
if [ "$CIFS" = 1 ]; then
    copy_with_libs "$PING_PONG_BIN"
fi
cp /etc/libibverbs.d/rxe.driver "$R/etc/libibverbs.d/"
mkdir -p "$R/usr/local/bin"
mv "$R$BIN" "$R/usr/local/bin/rdma-suite"
mv "$R$BENCH_BIN" "$R/usr/local/bin/lockbench"
mv "$R$SDD_BIN" "$R/usr/local/bin/smbdirectd"
mv "$R$LOCKMGRD_BIN" "$R/usr/local/bin/lockmgrd"
# Debug info is useless in the guest and slows the initramfs unpacking under emulation.
if command -v strip >/dev/null; then
    strip --strip-debug "$R/usr/local/bin/rdma-suite" "$R/usr/local/bin/lockbench" \
        "$R/usr/local/bin/smbdirectd" "$R/usr/local/bin/lockmgrd" || true
fi
RDMA_IN_GUEST=$RDMA_TOOL

# Modules in load order. crc32_generic is loaded by name at run time (crypto API), which
# needs modprobe; insmod it up front instead.
n=0
SEEN=" "
add_module() {
    local ko
    for ko in "$@"; do
        case "$SEEN" in *" $(basename "$ko") "*) continue ;; esac
        SEEN="$SEEN$(basename "$ko") "
        n=$((n + 1))
        cp "$ko" "$R/modules/$(printf '%02d' $n)-$(basename "$ko")"
    done
}
CRC=$(find "$KROOT/lib/modules/$KVER" -name 'crc32_generic.ko*' | head -1)
[ -n "$CRC" ] && add_module "$CRC"
# rdma_ucm: librdmacm's /dev/infiniband/rdma_cm (pulls rdma_cm, ib_cm, iw_cm) for smbdirectd.
for m in rdma_rxe dummy rdma_ucm; do
    mods=$(modprobe -d "$KROOT" -S "$KVER" --show-depends "$m" | awk '$1 == "insmod" {print $2}') ||
        fail "modprobe --show-depends $m failed"
    for ko in $mods; do
        add_module "$ko"
    done
done
# The kernel SMB client: our cifs.ko in place of Debian's, after its dependencies, and the
# crypto the client allocates at session setup even unsigned (cmac, hmac, sha512 for the 3.1.1
# preauth hash, ...); built-in ones have no insmod line.
for m in $([ -n "$CIFS_KO" ] && echo cifs cmac ccm gcm sha512_generic sha256_generic aesni_intel ecb hmac md5); do
    mods=$(modprobe -d "$KROOT" -S "$KVER" --show-depends "$m" 2>/dev/null | awk '$1 == "insmod" {print $2}') ||
        true
    for ko in $mods; do
        case "$(basename "$ko")" in
            cifs.ko) add_module "$CIFS_KO" ;;
            *) add_module "$ko" ;;
        esac
    done
done
if [ -n "$CIFS_KO" ]; then
    ls "$R/modules" | grep -q -- '-cifs\.ko$' || fail "cifs.ko not collected"
fi
# Compressed modules (.ko.xz) would need decompression; Debian 6.1 ships plain .ko.
ls "$R/modules" | grep -q '\.ko$' || fail "no kernel modules collected"

# The host's log filters reach the guest's processes (rdma-suite and smbd in it, smbdirectd).
GUEST_ENV=""
for v in RDMA_SUITE_LOG SMBDIRECTD_LOG; do
    if [ -n "${!v:-}" ]; then
        GUEST_ENV="$GUEST_ENV export $v='${!v//\'/}';"
    fi
done

cat >"$R/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin:/usr/local/bin
$GUEST_ENV
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
for m in /modules/*.ko; do
    insmod "\$m" || echo "GUEST: insmod \$m failed"
done
ip link set lo up
ip link set dummy0 up
ip addr add 10.0.0.1/24 dev dummy0
$RDMA_IN_GUEST link add rxe0 type rxe netdev dummy0 || echo "GUEST: rdma link add failed"
i=0
while [ \$i -lt 100 ]; do
    g=\$(cat /sys/class/infiniband/rxe0/ports/1/gids/1 2>/dev/null)
    case "\$g" in
        *ffff:0a00:0001*) break ;;
    esac
    sleep 0.1
    i=\$((i + 1))
done
echo "GUEST: rxe0 gid[1]=\$g"
echo "GUEST: running rdma-suite"
grep -q SMB_DIRECT /proc/fs/cifs/DebugData 2>/dev/null && echo "GUEST: cifs has SMB_DIRECT" ||
    echo "GUEST: no cifs with SMB_DIRECT loaded"
/usr/local/bin/rdma-suite --lockbench /usr/local/bin/lockbench --smbdirectd /usr/local/bin/smbdirectd $CIFS_ARG $REPL_ARG
echo "SOFTROCE-STATUS: \$?"
sync
poweroff -f
EOF
chmod +x "$R/init"
(cd "$R" && find . | cpio -o -H newc --quiet | gzip -1 >"$WORK/initrd.gz")
log "initramfs: $(du -h "$WORK/initrd.gz" | cut -f1)"

# ---- boot ---------------------------------------------------------------------------------------
OUT=$WORK/console.log
: >"$OUT"
log "booting $KVER under qemu (timeout ${TIMEOUT}s)"
"$QEMU" "${QEMU_FW[@]}" -nodefaults -nographic -serial stdio -cpu max -smp 2 -m 1024 -no-reboot \
    -kernel "$KROOT/boot/vmlinuz-$KVER" -initrd "$WORK/initrd.gz" \
    -append "console=ttyS0 panic=-1 quiet" </dev/null >"$OUT" 2>&1 &
QEMU_PID=$!
tail -n +1 -f "$OUT" --pid="$QEMU_PID" &
TAIL_PID=$!
deadline=$((SECONDS + TIMEOUT))
while kill -0 "$QEMU_PID" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then
        log "guest did not finish in ${TIMEOUT}s; killing qemu"
        kill -9 "$QEMU_PID" 2>/dev/null || true
        break
    fi
    sleep 1
done
wait "$QEMU_PID" 2>/dev/null || true
QEMU_PID=""
sleep 0.2
kill "$TAIL_PID" 2>/dev/null || true
wait "$TAIL_PID" 2>/dev/null || true

mkdir -p "$TARGET_DIR" && cp "$OUT" "$TARGET_DIR/softroce-console.log" 2>/dev/null || true
STATUS=$(tr -d '\r' <"$OUT" | sed -n 's/^SOFTROCE-STATUS: \([0-9]*\).*/\1/p' | tail -1)
if [ -z "$STATUS" ]; then
    fail "the guest reported no status (boot failure or timeout); console log above"
fi
if [ "$STATUS" != "0" ]; then
    fail "rdma-suite exited with status $STATUS in the guest"
fi
log "all soft-RoCE tests passed"
