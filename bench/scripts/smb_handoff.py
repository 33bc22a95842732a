#!/usr/bin/env python3
"""SMB clients of the shared-counter workload (`smbbench --suite handoff`, smbd's cluster test).

usage:
  smb_handoff.py turns HOST PORT USER PASSWORD FILE TURNS GO_FILE
      Opens FILE, prints "READY", waits until GO_FILE exists (so that every client starts
      together), then TURNS times: blocking exclusive LOCK of bytes 0..8, READ the 8-byte
      counter, WRITE it back plus one, UNLOCK. Prints one line "T GRANT_NS WAIT_NS" per turn
      (GRANT_NS: CLOCK_MONOTONIC when the LOCK was granted; WAIT_NS: LOCK request to grant),
      then "DONE TURNS".
  smb_handoff.py create HOST1 PORT1 HOST2 PORT2 USER PASSWORD FILE COUNT
      A client of node 1 holds FILE open; a client of node 2 opens it COUNT times (CREATE +
      CLOSE, the CREATE a share-mode check against node 1's open). Prints "C NS" per CREATE.
  smb_handoff.py counter HOST PORT USER PASSWORD FILE
      Prints "COUNTER N": the counter's final value (every turn must have counted once).

Python only drives the protocol; the timing of interest (a LOCK hand-off between nodes, a
pause of a lost wake-up) is well above its per-call cost, which is the same on one node and on
two.
"""
import os
import struct
import sys
import time
import uuid

from smbprotocol.connection import Connection
from smbprotocol.exceptions import SMBResponseException
from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes,
                              FilePipePrinterAccessMask as A, ImpersonationLevel, LockFlags,
                              Open, ShareAccess, SMB2LockElement)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

END_OF_FILE = 0xC0000011
SHARE_ALL = (ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE
             | ShareAccess.FILE_SHARE_DELETE)


def connect(host, port, user, password, share="data"):
    conn = Connection(uuid.uuid4(), host, int(port), require_signing=False)
    conn.connect()
    sess = Session(conn, user, password, require_encryption=False)
    sess.connect()
    tree = TreeConnect(sess, rf"\\{host}\{share}")
    tree.connect()
    return conn, tree


def open_file(tree, name):
    f = Open(tree, name)
    f.create(ImpersonationLevel.Impersonation, A.GENERIC_READ | A.GENERIC_WRITE,
             FileAttributes.FILE_ATTRIBUTE_NORMAL, SHARE_ALL, CreateDisposition.FILE_OPEN_IF,
             CreateOptions.FILE_NON_DIRECTORY_FILE)
    return f


def read_counter(f):
    try:
        data = f.read(0, 8)
    except SMBResponseException as e:
        if e.status != END_OF_FILE:
            raise
        data = b""
    return struct.unpack("<Q", data.ljust(8, b"\0")[:8])[0]


def element(flags):
    e = SMB2LockElement()
    e["offset"] = 0
    e["length"] = 8
    e["flags"] = flags
    return e


def turns(host, port, user, password, name, count, go_file):
    _conn, tree = connect(host, port, user, password)
    f = open_file(tree, name)
    take = [element(LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK)]
    give = [element(LockFlags.SMB2_LOCKFLAG_UNLOCK)]
    print("READY", flush=True)
    while not os.path.exists(go_file):
        time.sleep(0.001)
    out = []
    for _ in range(int(count)):
        t0 = time.monotonic_ns()
        f.lock(take)
        t1 = time.monotonic_ns()
        value = read_counter(f)
        f.write(struct.pack("<Q", value + 1), 0)
        f.lock(give)
        out.append(f"T {t1} {t1 - t0}")
    f.close()
    print("\n".join(out), flush=True)
    print(f"DONE {count}", flush=True)


def create(host1, port1, host2, port2, user, password, name, count):
    _c1, tree1 = connect(host1, port1, user, password)
    _c2, tree2 = connect(host2, port2, user, password)
    holder = open_file(tree1, name)
    out = []
    for _ in range(int(count)):
        f = Open(tree2, name)
        t0 = time.monotonic_ns()
        f.create(ImpersonationLevel.Impersonation, A.GENERIC_READ,
                 FileAttributes.FILE_ATTRIBUTE_NORMAL, SHARE_ALL, CreateDisposition.FILE_OPEN,
                 CreateOptions.FILE_NON_DIRECTORY_FILE)
        out.append(f"C {time.monotonic_ns() - t0}")
        f.close()
    holder.close()
    print("\n".join(out), flush=True)


def counter(host, port, user, password, name):
    _conn, tree = connect(host, port, user, password)
    f = open_file(tree, name)
    value = read_counter(f)
    f.close()
    print(f"COUNTER {value}", flush=True)


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    {"turns": turns, "create": create, "counter": counter}[mode](*args)


if __name__ == "__main__":
    main()
