#!/usr/bin/env python3
"""Anonymous and guest logons against smbd with the Python smbprotocol client (the smbclient
side is in smbd/server/tests/access.rs).

usage: anonymous_client.py HOST PORT SHARE MODE

The null session is a raw NTLMSSP exchange (MS-NLMP 3.2.5.1.2: empty user, empty NT
response, LM response of one zero byte) sent with smbprotocol's low-level Connection, so no
credentials are involved at all. Then, with that session, the script tries to list SHARE,
create a file, write it and delete `README.txt`.

Modes:
  default    smbd as shipped: the null session is refused at SESSION_SETUP, and so is
             "guest" with an empty password (no guest mapping)
  not_guest  allow_anonymous = true, SHARE without guest_ok: tree connect is ACCESS_DENIED
  guest_ok   allow_anonymous = true, SHARE guest_ok: listing works, creating a file for
             writing and deleting README.txt are ACCESS_DENIED (the guest account cannot
             write the users' directory)

Prints "PASS MODE" on the expected outcome, else "FAIL MODE: why" and exits 1.
"""
import struct
import sys
import uuid

from smbprotocol.connection import Connection
from smbprotocol.exceptions import MoreProcessingRequired, SMBResponseException
from smbprotocol.header import NtStatus
from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes,
                              FilePipePrinterAccessMask, ImpersonationLevel, ShareAccess,
                              SMB2CreateRequest, SMB2QueryDirectoryRequest, FileInformationClass,
                              DirectoryAccessMask)
from smbprotocol.session import Session, SMB2SessionSetupRequest
from smbprotocol.tree import SMB2TreeConnectRequest

STATUS_ACCESS_DENIED = 0xC0000022
STATUS_LOGON_FAILURE = 0xC000006D

NTLM_FLAGS = (0x00000001      # UNICODE
              | 0x00000004    # REQUEST_TARGET
              | 0x00000200    # NTLM
              | 0x00000800    # ANONYMOUS
              | 0x00008000    # ALWAYS_SIGN
              | 0x00080000    # EXTENDED_SESSIONSECURITY
              | 0x20000000    # 128
              | 0x80000000)   # 56


class Fail(Exception):
    pass


def check(cond, why):
    if not cond:
        raise Fail(why)


def status_of(conn, req):
    """(status, response header) of a sent request."""
    try:
        conn.receive(req, timeout=10)
        return 0, req.response
    except MoreProcessingRequired:
        return NtStatus.STATUS_MORE_PROCESSING_REQUIRED, req.response
    except SMBResponseException as e:
        return e.status, req.response


def ntlm_negotiate():
    # Signature, type 1, flags, empty domain and workstation fields.
    return b"NTLMSSP\0" + struct.pack("<II", 1, NTLM_FLAGS) + b"\0" * 16


def ntlm_anonymous_authenticate():
    # Fixed part of 64 bytes (no version, no MIC), then the payload: one zero byte of LM
    # response. Every other field is empty and points behind it.
    hdr = 64
    fields = struct.pack("<HHI", 1, 1, hdr)          # LmChallengeResponse
    for _ in range(5):                               # NT, domain, user, workstation, key
        fields += struct.pack("<HHI", 0, 0, hdr + 1)
    return (b"NTLMSSP\0" + struct.pack("<I", 3) + fields + struct.pack("<I", NTLM_FLAGS)
            + b"\0")


def null_session(conn):
    """Run the anonymous NTLM exchange; returns (final status, session id)."""
    sid = 0
    for token in (ntlm_negotiate(), ntlm_anonymous_authenticate()):
        req = SMB2SessionSetupRequest()
        req["security_mode"] = conn.client_security_mode
        req["buffer"] = token
        r = conn.send(req, sid=sid)
        st, resp = status_of(conn, r)
        if resp is not None:
            sid = resp["session_id"].get_value()
        if st != NtStatus.STATUS_MORE_PROCESSING_REQUIRED:
            return st, sid
    return st, sid


def tree_connect(conn, host, share, sid):
    req = SMB2TreeConnectRequest()
    req["buffer"] = f"\\\\{host}\\{share}".encode("utf-16-le")
    r = conn.send(req, sid=sid)
    st, resp = status_of(conn, r)
    return st, (resp["tree_id"].get_value() if resp is not None else 0)


def create(conn, sid, tid, name, access, disposition, options, attrs=0):
    req = SMB2CreateRequest()
    req["impersonation_level"] = ImpersonationLevel.Impersonation
    req["desired_access"] = access
    req["file_attributes"] = attrs
    req["share_access"] = (ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE
                           | ShareAccess.FILE_SHARE_DELETE)
    req["create_disposition"] = disposition
    req["create_options"] = options
    # An empty name (the share root) is two zero bytes with NameLength 0.
    req["buffer_path"] = name.encode("utf-16-le") if name else b"\x00\x00"
    r = conn.send(req, sid=sid, tid=tid)
    st, _ = status_of(conn, r)
    return st, r


def list_share(conn, sid, tid):
    st, r = create(conn, sid, tid, "", DirectoryAccessMask.FILE_LIST_DIRECTORY,
                   CreateDisposition.FILE_OPEN, CreateOptions.FILE_DIRECTORY_FILE)
    if st != 0:
        return st, []
    from smbprotocol.open import SMB2CreateResponse
    resp = SMB2CreateResponse()
    resp.unpack(r.response["data"].get_value())
    q = SMB2QueryDirectoryRequest()
    q["file_information_class"] = FileInformationClass.FILE_NAMES_INFORMATION
    q["file_id"] = resp["file_id"].get_value()
    q["buffer"] = "*".encode("utf-16-le")
    q["output_buffer_length"] = 65536
    qr = conn.send(q, sid=sid, tid=tid)
    st, _ = status_of(conn, qr)
    if st != 0:
        return st, []
    return 0, qr.response["data"].get_value()


def main():
    host, port, share, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    try:
        conn = Connection(uuid.uuid4(), host, port, require_signing=False)
        conn.connect()
        st, sid = null_session(conn)
        if mode == "default":
            check(st == STATUS_ACCESS_DENIED or st == STATUS_LOGON_FAILURE,
                  f"null session not refused: {st:#x}")
            # No guest mapping either: "guest" with an empty password.
            conn2 = Connection(uuid.uuid4(), host, port, require_signing=False)
            conn2.connect()
            try:
                Session(conn2, "guest", "", require_encryption=False).connect()
                raise Fail("guest logon accepted")
            except SMBResponseException as e:
                check(e.status == STATUS_LOGON_FAILURE, f"guest logon: {e.status:#x}")
            # And nothing can be done with the refused session's id.
            tst, _ = tree_connect(conn, host, share, sid)
            check(tst != 0, "tree connect on a refused session succeeded")
        else:
            check(st == 0, f"null session refused with allow_anonymous: {st:#x}")
            tst, tid = tree_connect(conn, host, share, sid)
            if mode == "not_guest":
                check(tst == STATUS_ACCESS_DENIED, f"tree connect: {tst:#x}")
            elif mode == "guest_ok":
                check(tst == 0, f"tree connect to a guest_ok share: {tst:#x}")
                lst, names = list_share(conn, sid, tid)
                check(lst == 0 and "README.txt".encode("utf-16-le") in names,
                      f"listing: {lst:#x}")
                wst, _ = create(conn, sid, tid, "x",
                                FilePipePrinterAccessMask.GENERIC_WRITE,
                                CreateDisposition.FILE_OVERWRITE_IF,
                                CreateOptions.FILE_NON_DIRECTORY_FILE,
                                FileAttributes.FILE_ATTRIBUTE_NORMAL)
                check(wst == STATUS_ACCESS_DENIED, f"create for writing: {wst:#x}")
                dst, _ = create(conn, sid, tid, "README.txt",
                                FilePipePrinterAccessMask.DELETE,
                                CreateDisposition.FILE_OPEN,
                                CreateOptions.FILE_NON_DIRECTORY_FILE
                                | CreateOptions.FILE_DELETE_ON_CLOSE)
                check(dst == STATUS_ACCESS_DENIED, f"open for delete: {dst:#x}")
            else:
                raise Fail(f"unknown mode {mode}")
    except Fail as e:
        print(f"FAIL {mode}: {e}", flush=True)
        sys.exit(1)
    print(f"PASS {mode}", flush=True)


if __name__ == "__main__":
    main()
