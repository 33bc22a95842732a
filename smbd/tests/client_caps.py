#!/usr/bin/env python3
"""One client over several connections (smbd [limits] *_per_client / *_per_user).

usage: client_caps.py HOST PORT USER PASSWORD USER2 PASSWORD2 MODE

MODE addr: three connections as USER from one address, then opens spread over the first
  two: prints "conn3 <result>" for the third connection's SESSION_SETUP and "open4 <result>"
  for the fourth open (the first three on two connections), then "reopen <result>" for an
  open after one of the first three was closed.
MODE user: three connections as USER, a fourth as USER2; "conn3 <result>" (USER's third),
  "other <result>" (USER2), then opens as USER over its two connections: "open4 <result>",
  and one as USER2: "other_open <result>".
A result is "ok" or "status=0x........".
"""
import sys
import uuid

from smbprotocol.connection import Connection
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect
from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes,
                              FilePipePrinterAccessMask, ImpersonationLevel, Open, ShareAccess)


def attempt(label, fn):
    try:
        r = fn()
        print(label, "ok", flush=True)
        return r
    except Exception as e:  # the server's refusal
        st = getattr(e, "status", None)
        print(label, "status=0x%08x" % st if st is not None else "error " + repr(e), flush=True)
        return None


def tree(host, port, user, password):
    c = Connection(uuid.uuid4(), host, port, require_signing=True)
    c.connect()
    s = Session(c, user, password)
    s.connect()
    t = TreeConnect(s, rf"\\{host}\data")
    t.connect()
    return t


def create(t, name):
    f = Open(t, name)
    f.create(ImpersonationLevel.Impersonation, FilePipePrinterAccessMask.GENERIC_READ
             | FilePipePrinterAccessMask.GENERIC_WRITE, FileAttributes.FILE_ATTRIBUTE_NORMAL,
             ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE,
             CreateDisposition.FILE_OVERWRITE_IF, CreateOptions.FILE_NON_DIRECTORY_FILE)
    return f


def main():
    host, port, user, password, user2, password2, mode = sys.argv[1:8]
    port = int(port)
    t1 = tree(host, port, user, password)
    t2 = tree(host, port, user, password)
    attempt("conn3", lambda: tree(host, port, user, password))
    if mode == "user":
        t_other = attempt("other", lambda: tree(host, port, user2, password2))
    f1 = create(t1, "f1")
    create(t1, "f2")
    create(t2, "f3")
    attempt("open4", lambda: create(t2, "f4"))
    if mode == "addr":
        f1.close()
        attempt("reopen", lambda: create(t2, "f5"))
    else:
        attempt("other_open", lambda: create(t_other, "g1"))
    print("done", flush=True)


if __name__ == "__main__":
    main()
