#!/usr/bin/env python3
"""Build smbtorture-known-failures.txt from the subunit files written by smbtorture-run.sh."""
import glob
import os
import re
import sys

SUITES = ["smb2.connect", "smb2.read", "smb2.rw", "smb2.getinfo", "smb2.setinfo", "smb2.dir",
          "smb2.create", "smb2.compound", "smb2.credits", "smb2.session", "smb2.rename",
          "smb2.delete-on-close-perms", "smb2.ioctl", "smb2.maxfid", "smb2.lock",
          "smb2.sharemode", "smb2.durable-open", "smb2.durable-v2-open", "smb2.oplock", "smb2.lease",
          "smb2.notify", "smb2.streams", "smb2.deny", "smb2.durable-v2-delay", "smb2.timestamps",
          "smb2.openattr", "smb2.winattr", "smb2.tcon", "smb2.mkdir", "smb2.sdread",
          "smb2.maximum_allowed"]

out = ["# smbtorture (Samba 4.17) subtests still failing against smbd, one per line:",
       "#   <suite.subtest>  # <reason: the assertion smbtorture reported>",
       "# smbd/server/tests/smbtorture.rs fails on any failure not listed here and reports listed",
       "# tests that pass now. Regenerate: smbd/tests/smbtorture-run.sh + gen-known-failures.py.",
       ""]
d = sys.argv[1]
for s in SUITES:
    p = os.path.join(d, f"res-{s}.txt")
    if not os.path.exists(p):
        continue
    lines = open(p, errors="replace").read().splitlines()
    out.append(f"## {s}")
    for i, line in enumerate(lines):
        m = re.match(r"^(failure|error): (.*?)( \[)?$", line)
        if not m:
            continue
        reason = ""
        for nxt in lines[i + 1:i + 4]:
            if nxt.strip() not in ("", "[", "]"):
                reason = nxt.strip()
                break
        reason = re.sub(r"^\(?(\.\./)*source4/torture/smb2/", "", reason)[:160]
        out.append(f"{m.group(2)}  # {reason}")
print("\n".join(out))
