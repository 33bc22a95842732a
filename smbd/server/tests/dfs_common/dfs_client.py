"""Reads a file through a DFS link with smbprotocol's high-level client (smbclient), which
follows STATUS_PATH_NOT_COVERED with FSCTL_DFS_GET_REFERRALS to the link's target.

Usage: dfs_client.py SERVER PORT SHARE USER PASSWORD PATH_BELOW_SHARE EXPECTED_CONTENT
"""
import sys

import smbclient
from smbclient._pool import ClientConfig

server, port, share, user, password, path, expected = sys.argv[1:8]
port = int(port)
unc = rf"\\{server}\{share}\{path}"
with smbclient.open_file(unc, mode="rb", username=user, password=password, port=port) as f:
    got = f.read().decode()
if got != expected:
    sys.exit(f"read {got!r} through {unc}, expected {expected!r}")
# The content alone could come from anywhere: the client must also hold a referral for the link.
referral = ClientConfig().lookup_referral([p for p in unc.split("\\") if p])
if referral is None:
    sys.exit("no DFS referral cached: the file was not reached through the link")
targets = [t.target_path for t in referral.target_list]
print(f"referral {referral.dfs_path} -> {targets}")
print("dfs read passed")
