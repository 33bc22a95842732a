#!/usr/bin/env python3
"""A client whose SMB2 requests the metrics test counts exactly (tests/metrics.rs).

usage: metrics_client.py HOST PORT USER PASSWORD FILE
Connects (NEGOTIATE, SESSION_SETUP, TREE_CONNECT), then CREATE FILE, WRITE 5 bytes, LOCK
[0, 10) exclusive, prints "HELD" and waits for a line on stdin (the harness scrapes while the
open and the lock are held), then LOCK (unlock), CLOSE, TREE_DISCONNECT, LOGOFF; prints "DONE".
"""
import sys
import uuid

from smbprotocol.connection import Connection
from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes,
                              FilePipePrinterAccessMask as A, ImpersonationLevel, LockFlags,
                              Open, ShareAccess, SMB2LockElement)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect


def lock_el(unlock):
    e = SMB2LockElement()
    e["offset"] = 0
    e["length"] = 10
    e["flags"] = (LockFlags.SMB2_LOCKFLAG_UNLOCK if unlock else
                  LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK | LockFlags.SMB2_LOCKFLAG_FAIL_IMMEDIATELY)
    return e


def main():
    host, port, user, password, name = sys.argv[1:6]
    conn = Connection(uuid.uuid4(), host, int(port), require_signing=False)
    conn.connect()
    sess = Session(conn, user, password, require_encryption=False)
    sess.connect()
    tree = TreeConnect(sess, rf"\\{host}\data")
    tree.connect()
    f = Open(tree, name)
    f.create(ImpersonationLevel.Impersonation, A.GENERIC_READ | A.GENERIC_WRITE,
             FileAttributes.FILE_ATTRIBUTE_NORMAL, ShareAccess.FILE_SHARE_READ,
             CreateDisposition.FILE_OVERWRITE_IF, CreateOptions.FILE_NON_DIRECTORY_FILE)
    f.write(b"hello", 0)
    f.lock([lock_el(False)])
    print("HELD", flush=True)
    sys.stdin.readline()
    f.lock([lock_el(True)])
    f.close()
    tree.disconnect()
    sess.disconnect()
    conn.disconnect()
    print("DONE", flush=True)


main()
