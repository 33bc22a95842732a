#!/usr/bin/env python3
"""Abusive SMB clients for smbd's limit tests (smbd/server/tests/limits.rs), on smbprotocol.

usage: limits_client.py COMMAND HOST PORT USER PASSWORD [ARGS...]

  ping                    negotiate, session, tree connect "data", echo; prints "PING OK"
  wildcard DIR PATTERN    QUERY_DIRECTORY of DIR with PATTERN; prints "SENT" once the request
                          is on the wire, then "RESULT <status hex> <entries>"
  compound COUNT LEN      COUNT READs of LEN bytes of a new file in one compound; prints
                          "RESULT ok=.. refused=.. other=.. bytes=.." or "DISCONNECTED ..."
  opens COUNT [stream]    up to COUNT opens on one session (stops at the first refusal), of
                          files or, with "stream", of a named stream of each file; prints
                          "RESULT ok=.. status=..", then "HOLDING" and keeps them until stdin
                          is closed
  setups COUNT            COUNT first SESSION_SETUP legs (NTLM NEGOTIATE, never completed) on
                          one connection; prints "RESULT more=.. refused=.. other=.."
  notify COUNT            COUNT CHANGE_NOTIFYs on one directory handle, never completed;
                          prints "RESULT pending=.. refused=.. other=.."
  trees COUNT             COUNT tree connects of "data" on one session; prints
                          "RESULT ok=.. refused=.. other=.."
  sessions COUNT          COUNT complete sessions on one connection; prints
                          "RESULT ok=.. refused=.. other=.."
  held COUNT              one handle takes COUNT one-byte locks (locks_per_conn)
  locks COUNT             COUNT handles each sending a blocking LOCK on a byte another handle
                          holds; prints "RESULT pending=.. refused=.. other=.."
  flood CONNS LEN         CONNS connections that each send as many READs of LEN bytes as their
                          credits allow and never read an answer; prints "SENT n", then waits
                          for stdin to close
Every status is printed as 0x%08x.
"""
import os
import sys
import threading
import uuid

import spnego
from smbprotocol.connection import Connection
from smbprotocol.exceptions import SMBResponseException
from smbprotocol.session import Session
from smbprotocol.session import SMB2SessionSetupRequest
from smbprotocol.tree import TreeConnect
from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes,
                              FileInformationClass, ImpersonationLevel, Open, ShareAccess,
                              FilePipePrinterAccessMask, DirectoryAccessMask)
from smbprotocol.header import Commands, NtStatus

GENERIC_RW = (FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE)


def connect(host, port, user, password):
    conn = Connection(uuid.uuid4(), host, port, require_signing=False)
    conn.connect()
    sess = Session(conn, user, password, require_encryption=False)
    sess.connect()
    tree = TreeConnect(sess, rf"\\{host}\data")
    tree.connect()
    return conn, sess, tree


def credits(conn, sess, want):
    """Ask for credits with an ECHO (smbd grants up to its window)."""
    conn.echo(sid=sess.session_id, credit_request=want)
    return conn.sequence_window["high"] - conn.sequence_window["low"]


def status_of(exc):
    return getattr(exc, "status", None)


def new_file(tree, name, size):
    f = Open(tree, name)
    f.create(ImpersonationLevel.Impersonation, GENERIC_RW, FileAttributes.FILE_ATTRIBUTE_NORMAL,
             ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE,
             CreateDisposition.FILE_OVERWRITE_IF, CreateOptions.FILE_NON_DIRECTORY_FILE)
    chunk = 65536
    data = b"x" * size
    for off in range(0, size, chunk):
        f.write(data[off:off + chunk], off)
    return f


def cmd_ping(host, port, user, password):
    conn, sess, tree = connect(host, port, user, password)
    conn.echo(sid=sess.session_id)
    print("PING OK", flush=True)


def cmd_wildcard(host, port, user, password, dirname, pattern):
    conn, sess, tree = connect(host, port, user, password)
    d = Open(tree, dirname)
    d.create(ImpersonationLevel.Impersonation, DirectoryAccessMask.FILE_LIST_DIRECTORY,
             FileAttributes.FILE_ATTRIBUTE_DIRECTORY, ShareAccess.FILE_SHARE_READ,
             CreateDisposition.FILE_OPEN, CreateOptions.FILE_DIRECTORY_FILE)
    msg, resp = d.query_directory(pattern, FileInformationClass.FILE_NAMES_INFORMATION, send=False)
    req = conn.send(msg, sess.session_id, tree.tree_connect_id)
    print("SENT", flush=True)
    try:
        entries = resp(req)
        print(f"RESULT 0x00000000 {len(entries)}", flush=True)
    except SMBResponseException as e:
        print(f"RESULT 0x{status_of(e):08x} 0", flush=True)


def cmd_compound(host, port, user, password, count, length):
    conn, sess, tree = connect(host, port, user, password)
    f = new_file(tree, f"compound-{count}.bin", length)
    have = credits(conn, sess, count + 64)
    assert have >= count, f"only {have} credits"
    msgs, fns = [], []
    for _ in range(count):
        m, fn = f.read(0, length, send=False)
        msgs.append(m)
        fns.append(fn)
    reqs = conn.send_compound(msgs, sess.session_id, tree.tree_connect_id, related=False)
    ok = refused = other = nbytes = 0
    try:
        for req, fn in zip(reqs, fns):
            try:
                nbytes += len(fn(req))
                ok += 1
            except SMBResponseException as e:
                if status_of(e) == NtStatus.STATUS_INSUFFICIENT_RESOURCES:
                    refused += 1
                else:
                    other += 1
    except Exception as e:  # the connection went away
        print(f"DISCONNECTED ok={ok} {type(e).__name__}", flush=True)
        os._exit(0)
    print(f"RESULT ok={ok} refused={refused} other={other} bytes={nbytes}", flush=True)


def cmd_opens(host, port, user, password, count, stream=False):
    conn, sess, tree = connect(host, port, user, password)
    window = 128
    credits(conn, sess, 2 * window)
    ok = 0
    first_err = None
    i = 0
    while i < count and first_err is None:
        batch = []
        for _ in range(min(window, count - i)):
            f = Open(tree, f"open-{i}:s" if stream else f"open-{i}")
            msg, fn = f.create(ImpersonationLevel.Impersonation, GENERIC_RW,
                               FileAttributes.FILE_ATTRIBUTE_NORMAL,
                               ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE,
                               CreateDisposition.FILE_OVERWRITE_IF,
                               CreateOptions.FILE_NON_DIRECTORY_FILE, send=False)
            batch.append((conn.send(msg, sess.session_id, tree.tree_connect_id), fn))
            i += 1
        for req, fn in batch:
            try:
                fn(req)
                ok += 1
            except SMBResponseException as e:
                if first_err is None:
                    first_err = status_of(e)
    print(f"RESULT ok={ok} status=0x{(first_err or 0):08x}", flush=True)
    print("HOLDING", flush=True)
    sys.stdin.read()
    os._exit(0)


def cmd_setups(host, port, user, password, count):
    conn = Connection(uuid.uuid4(), host, port, require_signing=False)
    conn.connect()
    # Credits for a window of requests (ECHO needs no session).
    conn.echo(sid=0, credit_request=256)
    more = refused = other = 0
    window = 64
    sent = 0
    while sent < count:
        reqs = []
        for _ in range(min(window, count - sent)):
            ctx = spnego.client(user, password, service="cifs", hostname=host,
                                options=spnego.NegotiateOptions.session_key, protocol="ntlm")
            setup = SMB2SessionSetupRequest()
            setup["security_mode"] = conn.client_security_mode
            setup["buffer"] = ctx.step()
            reqs.append(conn.send(setup, sid=0, credit_request=2))
            sent += 1
        for r in reqs:
            try:
                conn.receive(r)
                other += 1
            except SMBResponseException as e:
                st = status_of(e)
                if st == NtStatus.STATUS_MORE_PROCESSING_REQUIRED:
                    more += 1
                elif st == NtStatus.STATUS_REQUEST_NOT_ACCEPTED:
                    refused += 1
                else:
                    other += 1
    print(f"RESULT more={more} refused={refused} other={other}", flush=True)
    os._exit(0)


def cmd_notify(host, port, user, password, count):
    from smbprotocol.change_notify import SMB2ChangeNotifyRequest
    conn, sess, tree = connect(host, port, user, password)
    d = Open(tree, "notifydir")
    d.create(ImpersonationLevel.Impersonation, DirectoryAccessMask.FILE_LIST_DIRECTORY,
             FileAttributes.FILE_ATTRIBUTE_DIRECTORY, ShareAccess.FILE_SHARE_READ,
             CreateDisposition.FILE_OPEN_IF, CreateOptions.FILE_DIRECTORY_FILE)
    window = 64
    credits(conn, sess, 4 * window)
    pending = refused = other = 0
    sent = 0
    while sent < count:
        reqs = []
        for _ in range(min(window, count - sent)):
            m = SMB2ChangeNotifyRequest()
            m["output_buffer_length"] = 4096
            m["file_id"] = d.file_id
            m["completion_filter"] = 0x1  # FILE_NOTIFY_CHANGE_FILE_NAME
            reqs.append(conn.send(m, sess.session_id, tree.tree_connect_id))
            sent += 1
        for r in reqs:
            try:
                resp = conn.receive(r, wait=False)
                if resp["status"].get_value() == NtStatus.STATUS_PENDING:
                    pending += 1
                else:
                    other += 1
            except SMBResponseException as e:
                if status_of(e) == NtStatus.STATUS_INSUFFICIENT_RESOURCES:
                    refused += 1
                else:
                    other += 1
    print(f"RESULT pending={pending} refused={refused} other={other}", flush=True)
    os._exit(0)


def cmd_trees(host, port, user, password, count):
    conn, sess, tree = connect(host, port, user, password)
    ok = 1  # the one connect() made
    refused = other = 0
    for _ in range(count - 1):
        try:
            TreeConnect(sess, rf"\\{host}\data").connect()
            ok += 1
        except SMBResponseException as e:
            if status_of(e) == NtStatus.STATUS_INSUFFICIENT_RESOURCES:
                refused += 1
            else:
                other += 1
    print(f"RESULT ok={ok} refused={refused} other={other}", flush=True)
    os._exit(0)


def cmd_sessions(host, port, user, password, count):
    conn = Connection(uuid.uuid4(), host, port, require_signing=False)
    conn.connect()
    ok = refused = other = 0
    for _ in range(count):
        try:
            Session(conn, user, password, require_encryption=False).connect()
            ok += 1
        except SMBResponseException as e:
            if status_of(e) == NtStatus.STATUS_REQUEST_NOT_ACCEPTED:
                refused += 1
            else:
                other += 1
    print(f"RESULT ok={ok} refused={refused} other={other}", flush=True)
    os._exit(0)


def cmd_locks(host, port, user, password, count):
    from smbprotocol.open import SMB2LockElement, LockFlags
    conn, sess, tree = connect(host, port, user, password)
    credits(conn, sess, 256)

    def handle():
        f = Open(tree, "locked.bin")
        f.create(ImpersonationLevel.Impersonation, GENERIC_RW, FileAttributes.FILE_ATTRIBUTE_NORMAL,
                 ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE,
                 CreateDisposition.FILE_OPEN_IF, CreateOptions.FILE_NON_DIRECTORY_FILE)
        return f

    def element(flags):
        e = SMB2LockElement()
        e["offset"] = 0
        e["length"] = 1
        e["flags"] = flags
        return e

    holder = handle()
    holder.lock([element(LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK
                         | LockFlags.SMB2_LOCKFLAG_FAIL_IMMEDIATELY)])
    waiters = [handle() for _ in range(count)]
    pending = refused = other = 0
    for w in waiters:
        msg, _ = w.lock([element(LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK)], send=False)
        req = conn.send(msg, sess.session_id, tree.tree_connect_id)
        try:
            resp = conn.receive(req, wait=False)
            if resp["status"].get_value() == NtStatus.STATUS_PENDING:
                pending += 1
            else:
                other += 1
        except SMBResponseException as e:
            if status_of(e) == NtStatus.STATUS_INSUFFICIENT_RESOURCES:
                refused += 1
            else:
                other += 1
    print(f"RESULT pending={pending} refused={refused} other={other}", flush=True)
    os._exit(0)


def cmd_held(host, port, user, password, count):
    """One handle takes COUNT one-byte locks at distinct offsets (FAIL_IMMEDIATELY)."""
    from smbprotocol.open import SMB2LockElement, LockFlags
    conn, sess, tree = connect(host, port, user, password)
    f = Open(tree, "held.bin")
    f.create(ImpersonationLevel.Impersonation, GENERIC_RW, FileAttributes.FILE_ATTRIBUTE_NORMAL,
             ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE,
             CreateDisposition.FILE_OPEN_IF, CreateOptions.FILE_NON_DIRECTORY_FILE)
    ok = refused = other = 0
    for i in range(count):
        e = SMB2LockElement()
        e["offset"] = i
        e["length"] = 1
        e["flags"] = LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK | LockFlags.SMB2_LOCKFLAG_FAIL_IMMEDIATELY
        try:
            f.lock([e])
            ok += 1
        except SMBResponseException as exc:
            if status_of(exc) == NtStatus.STATUS_INSUFFICIENT_RESOURCES:
                refused += 1
            else:
                other += 1
    print(f"RESULT ok={ok} refused={refused} other={other}", flush=True)
    os._exit(0)


def cmd_flood(host, port, user, password, conns, length):
    senders = []
    sent = [0]
    lock = threading.Lock()
    for c in range(conns):
        conn, sess, tree = connect(host, port, user, password)
        f = new_file(tree, f"flood-{c}.bin", length)
        have = credits(conn, sess, 8000)
        # From now on nobody reads this connection's answers: the receive thread blocks the
        # next time it asks the transport for a message.
        never = threading.Event()
        conn.transport.recv = lambda *a, **k: never.wait()
        msgs = [f.read(0, length, send=False)[0] for _ in range(have // max(1, (length + 65535) // 65536))]

        def send_all(conn=conn, sess=sess, tree=tree, msgs=msgs):
            for m in msgs:
                conn.send(m, sess.session_id, tree.tree_connect_id)
                with lock:
                    sent[0] += 1

        t = threading.Thread(target=send_all, daemon=True)
        t.start()
        senders.append(t)
    # A sender blocks when smbd stops reading its connection (that is the point); wait a
    # bounded time for them.
    for t in senders:
        t.join(timeout=30)
    print(f"SENT {sent[0]}", flush=True)
    sys.stdin.read()
    os._exit(0)


def main():
    cmd, host, port, user, password = sys.argv[1:6]
    port = int(port)
    rest = sys.argv[6:]
    if cmd == "ping":
        cmd_ping(host, port, user, password)
    elif cmd == "wildcard":
        cmd_wildcard(host, port, user, password, rest[0], rest[1])
    elif cmd == "compound":
        cmd_compound(host, port, user, password, int(rest[0]), int(rest[1]))
    elif cmd == "opens":
        cmd_opens(host, port, user, password, int(rest[0]), rest[1:2] == ["stream"])
    elif cmd == "setups":
        cmd_setups(host, port, user, password, int(rest[0]))
    elif cmd == "notify":
        cmd_notify(host, port, user, password, int(rest[0]))
    elif cmd == "trees":
        cmd_trees(host, port, user, password, int(rest[0]))
    elif cmd == "sessions":
        cmd_sessions(host, port, user, password, int(rest[0]))
    elif cmd == "locks":
        cmd_locks(host, port, user, password, int(rest[0]))
    elif cmd == "held":
        cmd_held(host, port, user, password, int(rest[0]))
    elif cmd == "flood":
        cmd_flood(host, port, user, password, int(rest[0]), int(rest[1]))
    else:
        sys.exit(f"unknown command {cmd}")
    os._exit(0)


if __name__ == "__main__":
    main()
