#!/usr/bin/env python3
"""QUERY_INFO, SET_INFO and CLOSE act on the handle's object, not on its path.

usage: handle_swap.py HOST PORT SHARE USER PASSWORD SHARE_DIR OUTSIDE_DIR OUTSIDE_FILETIME

The share holds dir/f, d2/g and d3/g; OUTSIDE_DIR (outside the share, owned by the user,
mtime OUTSIDE_FILETIME) holds its own f. The script opens handles on `dir`, `dir\\f` and
(delete-on-close) `d2\\g`, then swaps `dir` for a symlink to OUTSIDE_DIR and `d3` into
`d2`'s place, the way a local user or another protocol could, and uses the handles:

  query   QUERY_INFO FileBasicInformation on the `dir` handle
  close   CLOSE with POSTQUERY_ATTRIB on a second `dir` handle
  times   SET_INFO FileBasicInformation LastWriteTime on the `dir` handle
  attrs   SET_INFO FileBasicInformation READONLY on the `dir\\f` handle (a chmod)
  delete  CLOSE of the delete-on-close `d2\\g` handle

A server that acts on the path reports the outside directory's time (query, close), changes
the outside directory or file (times, attrs: the test checks the disk) or deletes d3's g in
place of d2's (delete: the test checks the disk). Prints "query ok" / "close ok" when the
reported times are not the outside directory's, then "done".
"""
import os
import sys
import uuid

from smbprotocol.connection import Connection
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect
from smbprotocol.file_info import FileBasicInformation
from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes,
                              ImpersonationLevel, Open, ShareAccess,
                              SMB2QueryInfoRequest, SMB2QueryInfoResponse,
                              SMB2SetInfoRequest, SMB2SetInfoResponse)

READ_ATTRIBUTES = 0x80
WRITE_ATTRIBUTES = 0x100
DELETE = 0x10000
READ_CONTROL = 0x20000
SYNCHRONIZE = 0x100000
GENERIC_READ = 0x80000000
SHARE_ALL = (ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE
             | ShareAccess.FILE_SHARE_DELETE)
# 1999-01-01 as a FILETIME.
T1999 = (915148800 + 11644473600) * 10_000_000


def open_handle(tree, name, access, options):
    f = Open(tree, name)
    f.create(ImpersonationLevel.Impersonation, access, FileAttributes.FILE_ATTRIBUTE_NORMAL,
             SHARE_ALL, CreateDisposition.FILE_OPEN, options)
    return f


def send(f, req):
    r = f.connection.send(req, f.tree_connect.session.session_id,
                          f.tree_connect.tree_connect_id)
    return f.connection.receive(r)


def query_basic(f):
    req = SMB2QueryInfoRequest()
    req["info_type"] = FileBasicInformation.INFO_TYPE
    req["file_info_class"] = FileBasicInformation.INFO_CLASS
    req["file_id"] = f.file_id
    req["output_buffer_length"] = 40
    resp = SMB2QueryInfoResponse()
    resp.unpack(send(f, req)["data"].get_value())
    return resp.parse_buffer(FileBasicInformation)


def set_basic(f, last_write_time=0, attributes=0):
    info = FileBasicInformation()
    info["last_write_time"] = last_write_time
    info["file_attributes"] = attributes
    req = SMB2SetInfoRequest()
    req["info_type"] = info.INFO_TYPE
    req["file_info_class"] = info.INFO_CLASS
    req["file_id"] = f.file_id
    req["buffer"] = info
    SMB2SetInfoResponse().unpack(send(f, req)["data"].get_value())


def filetime(field):
    """A FILETIME field as the integer on the wire (smbprotocol shows some as datetimes)."""
    return int.from_bytes(field.pack(), "little")


def main():
    host, port, share, user, password, share_dir, outside, outside_ft = sys.argv[1:9]
    outside_ft = int(outside_ft)
    conn = Connection(uuid.uuid4(), host, int(port), require_signing=True)
    conn.connect()
    sess = Session(conn, user, password)
    sess.connect()
    tree = TreeConnect(sess, rf"\\{host}\{share}")
    tree.connect()
    dir_access = READ_ATTRIBUTES | WRITE_ATTRIBUTES | READ_CONTROL | SYNCHRONIZE
    hdir = open_handle(tree, "dir", dir_access, CreateOptions.FILE_DIRECTORY_FILE)
    hdir2 = open_handle(tree, "dir", dir_access, CreateOptions.FILE_DIRECTORY_FILE)
    hf = open_handle(tree, r"dir\f", GENERIC_READ | READ_ATTRIBUTES | WRITE_ATTRIBUTES,
                     CreateOptions.FILE_NON_DIRECTORY_FILE)
    hdel = open_handle(tree, r"d2\g", DELETE | READ_ATTRIBUTES,
                       CreateOptions.FILE_NON_DIRECTORY_FILE | CreateOptions.FILE_DELETE_ON_CLOSE)

    inside = os.path.join(share_dir, "dir")
    os.rename(inside, inside + ".orig")
    os.symlink(outside, inside)
    os.rename(os.path.join(share_dir, "d2"), os.path.join(share_dir, "d2.orig"))
    os.rename(os.path.join(share_dir, "d3"), os.path.join(share_dir, "d2"))
    print("swapped", flush=True)

    t = filetime(query_basic(hdir)["last_write_time"])
    print("query", "LEAK" if t == outside_ft else "ok", t, flush=True)
    r = hdir2.close(get_attributes=True)
    t = filetime(r["last_write_time"])
    print("close", "LEAK" if t == outside_ft else "ok", t, flush=True)
    for name, call in (("times", lambda: set_basic(hdir, last_write_time=T1999)),
                       ("attrs", lambda: set_basic(hf, attributes=FileAttributes.FILE_ATTRIBUTE_READONLY))):
        try:
            call()
            print(name, "set", flush=True)
        except Exception as e:  # a refusal is fine too; the test checks the disk
            print(name, "refused", repr(e), flush=True)
    for h in (hdel, hf, hdir):
        try:
            h.close()
        except Exception as e:
            print("close failed", repr(e), flush=True)
    conn.disconnect()
    print("done", flush=True)


if __name__ == "__main__":
    main()
