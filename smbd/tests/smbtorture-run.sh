#!/bin/bash
# Run smbtorture suites against a running smbd and (re)generate the known-failures list.
#
#   smbd/tests/smbtorture-run.sh PORT OUTDIR [SUITE...]
#
# Needs users alice:secret and bob:pass2 and a share named "data" (what the cargo tests use).
# Writes OUTDIR/res-SUITE.txt (subunit) per suite and prints pass/fail counts; then
#   python3 smbd/tests/gen-known-failures.py OUTDIR > smbd/tests/smbtorture-known-failures.txt
set -u
port=$1; out=$2; shift 2
suites=${*:-smb2.connect smb2.read smb2.rw smb2.getinfo smb2.setinfo smb2.dir smb2.create smb2.compound smb2.credits smb2.session smb2.rename smb2.delete-on-close-perms smb2.ioctl smb2.maxfid smb2.lock smb2.sharemode smb2.durable-open smb2.durable-v2-open smb2.oplock smb2.lease smb2.notify smb2.streams smb2.deny smb2.durable-v2-delay smb2.timestamps smb2.openattr smb2.winattr smb2.tcon smb2.mkdir smb2.sdread smb2.maximum_allowed}
conf=$(mktemp)
printf '[global]\nclient min protocol = SMB2_02\nclient max protocol = SMB3_11\n' > "$conf"
mkdir -p "$out"
for s in $suites; do
  timeout 600 smbtorture //127.0.0.1/data -p "$port" -s "$conf" -U alice%secret --target=samba3 \
    --format=subunit --fullname --option=torture:user2name=bob --option=torture:user2password=pass2 \
    "$s" > "$out/res-$s.txt" 2>&1
  echo "$s: $(grep -c '^success:' "$out/res-$s.txt") ok, $(grep -c -E '^(failure|error):' "$out/res-$s.txt") fail, $(grep -c '^skip:' "$out/res-$s.txt") skip"
done
rm -f "$conf"
