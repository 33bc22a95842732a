"""Reads a file through a DFS link with smbprotocol's high-level client (smbclient), which
follows STATUS_PATH_NOT_COVERED with FSCTL_DFS_GET_REFERRALS to the link's target, then checks
the server's side of it directly: the share's DFS flags, PATH_NOT_COVERED on an open through
the link, the root and link referrals (MS-DFSC 2.2.4, 2.2.5.4), the same at MaxReferralLevel
1, 2 and 3 (entries of that version, 2.2.5.1-2.2.5.3) and NOT_FOUND off every link.

Usage: dfs_client.py SERVER PORT SHARE USER PASSWORD LINK FILE_BELOW_LINK EXPECTED_CONTENT
"""
import sys

import smbclient
from smbclient._pool import ClientConfig, dfs_request, get_smb_tree
from smbprotocol.dfs import DFSReferralRequest, DFSReferralResponse
from smbprotocol.exceptions import NotFound, PathNotCovered
from smbprotocol.ioctl import CtlCode, IOCTLFlags, SMB2IOCTLRequest, SMB2IOCTLResponse
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    FilePipePrinterAccessMask,
    ImpersonationLevel,
    Open,
    ShareAccess,
)

server, port, share, user, password, link, name, expected = sys.argv[1:9]
port = int(port)
kw = {"username": user, "password": password, "port": port}


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")


unc = rf"\\{server}\{share}\{link}\{name}"
with smbclient.open_file(unc, mode="rb", **kw) as f:
    got = f.read().decode()
check(got == expected, f"read {got!r} through {unc}, expected {expected!r}")
referral = ClientConfig().lookup_referral([p for p in unc.split("\\") if p])
check(referral is not None, "no DFS referral cached: the file was not reached through the link")
targets = [t.target_path for t in referral.target_list]
print(f"referral {referral.dfs_path} -> {targets}")

# The server's side, without the high-level client's fallbacks.
tree, _ = get_smb_tree(rf"\\{server}\{share}", **kw)
check(tree.is_dfs_share, "the DFS root share lacks SMB2_SHARE_CAP_DFS")
op = Open(tree, rf"{server}\{share}\{link}\{name}")
try:
    op.create(
        ImpersonationLevel.Impersonation,
        FilePipePrinterAccessMask.GENERIC_READ,
        0,
        ShareAccess.FILE_SHARE_READ,
        CreateDisposition.FILE_OPEN,
        CreateOptions.FILE_NON_DIRECTORY_FILE,
    )
    sys.exit("FAILED: an open through the link succeeded on the root's node")
except PathNotCovered:
    pass

root = dfs_request(tree, rf"\{server}\{share}")
entries = root["referral_entries"].get_value()
check(len(entries) == 1, f"root referral has {len(entries)} entries")
check(entries[0]["server_type"].get_value() == 1, "root referral is not ROOT_TARGETS")
check(entries[0].network_address == rf"\{server}\{share}", f"root target {entries[0].network_address}")
check(root["referral_header_flags"].get_value() & 3 == 3, "root referral lacks R|S")

path = rf"\{server}\{share}\{link}\{name}"
resp = dfs_request(tree, path)
consumed = resp["path_consumed"].get_value()
want = len(rf"\{server}\{share}\{link}".encode("utf-16-le"))
check(consumed == want, f"PathConsumed {consumed}, expected {want}")
entries = resp["referral_entries"].get_value()
check([e.network_address for e in entries] == targets, "link referral targets differ")
check(entries[0]["server_type"].get_value() == 0, "link referral is not a link target")

# A client asking for at most version 1, 2 or 3 gets entries of exactly that version (MS-DFSC
# 3.2.5.5): V1 carries only the target (2.2.5.1), V2 the paths and TTL too (2.2.5.2).
def referral_at(level, path):
    req = DFSReferralRequest()
    req["max_referral_level"] = level
    req["request_file_name"] = path
    ioctl_req = SMB2IOCTLRequest()
    ioctl_req["ctl_code"] = CtlCode.FSCTL_DFS_GET_REFERRALS
    ioctl_req["file_id"] = b"\xff" * 16
    ioctl_req["max_output_response"] = 56 * 1024
    ioctl_req["flags"] = IOCTLFlags.SMB2_0_IOCTL_IS_FSCTL
    ioctl_req["buffer"] = req
    conn = tree.session.connection
    response = conn.receive(conn.send(ioctl_req, sid=tree.session.session_id, tid=tree.tree_connect_id))
    ioctl_resp = SMB2IOCTLResponse()
    ioctl_resp.unpack(response["data"].get_value())
    out = DFSReferralResponse()
    out.unpack(ioctl_resp["buffer"].get_value())
    return out


link_path = rf"\{server}\{share}\{link}"
for level in (1, 2, 3):
    resp = referral_at(level, path)
    entries = resp["referral_entries"].get_value()
    versions = [e["version_number"].get_value() for e in entries]
    check(versions == [level] * len(targets), f"level {level}: entry versions {versions}")
    check(resp["path_consumed"].get_value() == want, f"level {level}: PathConsumed")
    check([e.network_address for e in entries] == targets, f"level {level}: targets {[e.network_address for e in entries]}")
    if level >= 2:
        check(all(e.dfs_path == link_path for e in entries), f"level {level}: DFS path {entries[0].dfs_path}")
    root = referral_at(level, rf"\{server}\{share}")["referral_entries"].get_value()
    check(root[0]["version_number"].get_value() == level and root[0].network_address == rf"\{server}\{share}",
          f"level {level}: root referral {root[0].network_address}")
print("referral versions 1-3 passed")

try:
    dfs_request(tree, rf"\{server}\{share}\not-a-link")
    sys.exit("FAILED: a referral for a path off every link")
except NotFound:
    pass
print("dfs read passed")
