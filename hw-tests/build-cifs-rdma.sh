#!/usr/bin/env bash
# Builds the Linux kernel's SMB client (cifs.ko) WITH SMB Direct for the soft-RoCE guest kernel.
#
# Debian compiles CONFIG_CIFS_SMB_DIRECT out, so the soft-RoCE suite's real-client test needs
# its own cifs.ko: the module is rebuilt out of tree from the Debian source package of the
# same version as the guest's linux-image package, against that version's headers
# (../shared/reference/smbdirect-testing.md has the checked recipe). Image, headers and source
# are chosen together from whatever linux-image-amd64 depends on today, never a pinned version;
# everything is downloaded with `apt-get download`, unpacked with `dpkg -x` into the cache
# (nothing is installed on the host) and the module is cached per kernel version.
#
#   bash hw-tests/build-cifs-rdma.sh KVER CACHE
#
# Prints the path of the built cifs.ko on stdout; exits non-zero with a reason otherwise.
set -euo pipefail

KVER=${1:?kernel version, e.g. 6.1.0-57-amd64}
CACHE=${2:?cache directory}
log() { echo "build-cifs-rdma: $*" >&2; }

OUT=$CACHE/cifs-rdma-$KVER
if [ -f "$OUT/cifs.ko" ]; then
    echo "$OUT/cifs.ko"
    exit 0
fi

IMG_PKG=linux-image-$KVER
# The Debian package version of the image (e.g. 6.1.192-3): headers and source must be the same.
PKGVER=$(apt-cache show "$IMG_PKG" 2>/dev/null | awk '/^Version:/ {print $2; exit}')
[ -n "$PKGVER" ] || { log "apt knows no $IMG_PKG"; exit 1; }
ABI=${KVER%-amd64}                         # 6.1.0-57
SERIES=$(echo "$KVER" | cut -d. -f1-2)      # 6.1
SRC_PKG=linux-source-$SERIES
HDR_PKG=linux-headers-$KVER
HDR_COMMON=linux-headers-$ABI-common
KBUILD_PKG=linux-kbuild-$SERIES
log "kernel $KVER (package $PKGVER): $SRC_PKG, $HDR_PKG, $HDR_COMMON, $KBUILD_PKG"

mkdir -p "$CACHE/debs"
chmod 0755 "$CACHE/debs" 2>/dev/null || true
for p in "$SRC_PKG" "$HDR_PKG" "$HDR_COMMON" "$KBUILD_PKG"; do
    if ! ls "$CACHE/debs/${p}_${PKGVER//:/%3a}_"*.deb >/dev/null 2>&1; then
        log "downloading $p=$PKGVER"
        (cd "$CACHE/debs" && apt-get download "$p=$PKGVER" >&2) || { log "cannot download $p=$PKGVER"; exit 1; }
    fi
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cifs-rdma.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
for p in "$HDR_PKG" "$HDR_COMMON" "$KBUILD_PKG" "$SRC_PKG"; do
    dpkg -x "$CACHE/debs/${p}_${PKGVER//:/%3a}_"*.deb "$WORK/root"
done
HDRS=$WORK/root/usr/src/linux-headers-$KVER
[ -d "$HDRS" ] || { log "no headers at $HDRS"; exit 1; }
# The arch headers' Makefile includes the common one by its absolute installed path.
sed -i "s|/usr/src/|$WORK/root/usr/src/|" "$HDRS/Makefile"
TARBALL=$(ls "$WORK"/root/usr/src/linux-source-"$SERIES".tar.xz)
log "unpacking fs/smb and the ASN.1 compiler from $(basename "$TARBALL")"
mkdir -p "$WORK/src"
tar -C "$WORK/src" --strip-components=1 -xJf "$TARBALL" \
    --wildcards '*/fs/smb/*' '*/scripts/asn1_compiler.c' '*/include/linux/asn1*.h'
# The headers package has no ASN.1 compiler; build it from the same tree.
gcc -O2 -I "$WORK/src/include" -o "$WORK/asn1_compiler" "$WORK/src/scripts/asn1_compiler.c"
CLIENT=$WORK/src/fs/smb/client
for a in "$CLIENT"/*.asn1; do
    "$WORK/asn1_compiler" "$a" "$a.c" "$a.h"
done
log "building cifs.ko with CONFIG_CIFS_SMB_DIRECT"
# autoconf.h of the headers package lacks the option, hence the KCFLAGS define as well.
make -s -C "$HDRS" M="$CLIENT" CONFIG_CIFS=m CONFIG_CIFS_SMB_DIRECT=y \
    KCFLAGS=-DCONFIG_CIFS_SMB_DIRECT=1 -j"$(nproc)" modules >&2
mkdir -p "$OUT.tmp"
cp "$CLIENT/cifs.ko" "$OUT.tmp/cifs.ko"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
echo "$OUT/cifs.ko"
