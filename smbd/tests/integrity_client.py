#!/usr/bin/env python3
"""Message integrity probes against smbd (MS-SMB2 3.3.5.2), with the smbprotocol client.

usage: integrity_client.py HOST PORT SHARE USER PASS USER2 PASS2 CASE

Each CASE sets up a file with the content b"good" through a legitimate signed session, then
tries to change it to b"EVIL" (or otherwise act) through the path under test. It prints
"PASS CASE" when the server refused as it must; the caller (smbd/server/tests/integrity.rs)
also checks the file on disk. Any other outcome prints "FAIL CASE: why" and exits 1.

Cases:
  replay_write          a signed WRITE sent again with the same MessageId -> disconnect
  out_of_window         a WRITE with a MessageId never granted -> disconnect
  sealed_other_session  a WRITE of session B sealed with session A's key -> disconnect
  fileid_other_tree     a FileId of tree 1 used through tree 2 -> STATUS_FILE_CLOSED
  fileid_other_session  a FileId of session A used from session B -> STATUS_FILE_CLOSED
  reauth_other_user     reauthentication of alice's session as bob -> refused, still alice
  reauth_unsigned       unsigned reauthentication of a signing session -> ACCESS_DENIED
  cancel_unsigned       unsigned CANCEL of a signed blocking LOCK -> ignored, lock granted
  compound_bad_signature  related WRITE with a bad signature after a good FLUSH -> refused
  binding_signature     SESSION_SETUP binding a second connection (multichannel) unsigned or
                        with a wrong signature -> refused; correctly signed -> goes on
  async_final_signed    the final response of a LOCK that went async (STATUS_PENDING) carries
                        a valid signature of the session's key (checked, not trusted)
  logoff_signed         the response to a signed LOGOFF is signed with the key of the session
                        it ended (the Linux client checks it, and failed here)
"""
import sys
import threading
import time
import uuid

import spnego
from smbprotocol.connection import Connection, Dialects, SMB2CancelRequest
from smbprotocol.exceptions import MoreProcessingRequired, SMBResponseException
from smbprotocol.header import Commands, NtStatus, Smb2Flags
from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes,
                              FilePipePrinterAccessMask, ImpersonationLevel, LockFlags, Open,
                              ShareAccess, SMB2FlushRequest, SMB2LockElement,
                              SMB2LockRequest)
from smbprotocol.session import (Session, SMB2Logoff, SMB2SessionSetupRequest,
                                 SMB2SessionSetupResponse)
from smbprotocol.tree import TreeConnect

STATUS_FILE_CLOSED = 0xC0000128
STATUS_ACCESS_DENIED = 0xC0000022
STATUS_CANCELLED = 0xC0000120
STATUS_INVALID_PARAMETER = 0xC000000D
SESSION_FLAG_BINDING = 0x01


class Fail(Exception):
    pass


def check(cond, why):
    if not cond:
        raise Fail(why)


def connect(host, port, dialect=Dialects.SMB_3_1_1):
    conn = Connection(uuid.uuid4(), host, port, require_signing=True)
    conn.connect(dialect=dialect)
    return conn


def login(conn, user, password):
    s = Session(conn, user, password, require_encryption=False)
    s.connect()
    return s


def tree(sess, host, share):
    t = TreeConnect(sess, rf"\\{host}\{share}")
    t.connect()
    return t


def create(t, name):
    f = Open(t, name)
    f.create(ImpersonationLevel.Impersonation,
             FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE,
             FileAttributes.FILE_ATTRIBUTE_NORMAL,
             ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE,
             CreateDisposition.FILE_OVERWRITE_IF,
             CreateOptions.FILE_NON_DIRECTORY_FILE)
    f.write(b"good", 0)
    return f


def status_of(conn, req, timeout=10):
    """Final status of a sent request; raises on a dropped connection or a timeout."""
    try:
        conn.receive(req, timeout=timeout)
        return 0
    except MoreProcessingRequired:
        return NtStatus.STATUS_MORE_PROCESSING_REQUIRED
    except SMBResponseException as e:
        return e.status


def is_dead(conn, sess):
    """True when the server dropped the connection."""
    time.sleep(0.3)
    try:
        conn.echo(sid=sess.session_id, timeout=5)
        return False
    except Exception:
        return True


def send_expect_disconnect(conn, sess, send):
    """Send something the server must answer by disconnecting."""
    try:
        req = send()
    except Exception:
        return  # the server already closed the socket
    try:
        st = status_of(conn, req, timeout=5)
    except Exception:
        return
    raise Fail(f"server answered with status {st:#x} instead of disconnecting")


def reauth(conn, sess, host, user, password, sign=True):
    """Reauthenticate `sess` (SESSION_SETUP on its SessionId); returns the final status."""
    ctx = spnego.client(user, password, service="cifs", hostname=host,
                        options=spnego.NegotiateOptions.session_key, protocol="negotiate")
    in_token = conn.gss_negotiate_token
    saved = sess.signing_required
    if not sign:
        sess.signing_required = False
    try:
        while not ctx.complete:
            out = ctx.step(in_token)
            if not out:
                break
            req = SMB2SessionSetupRequest()
            req["security_mode"] = conn.client_security_mode
            req["buffer"] = out
            r = conn.send(req, sid=sess.session_id)
            mid = r.message["message_id"].get_value()
            st = status_of(conn, r)
            conn.preauth_integrity_session_hash_value.pop(mid, None)
            if st not in (0, NtStatus.STATUS_MORE_PROCESSING_REQUIRED):
                return st
            resp = SMB2SessionSetupResponse()
            resp.unpack(r.response["data"].get_value())
            in_token = resp["buffer"].get_value()
        return 0
    finally:
        sess.signing_required = saved


def write_req(f, data):
    req, _ = f.write(data, 0, send=False)
    return req


def case_replay_write(a):
    conn = connect(a.host, a.port)
    sess = login(conn, a.user, a.pw)
    t = tree(sess, a.host, a.share)
    f = create(t, "replay_write.txt")
    first = conn.send(write_req(f, b"EVIL"), sid=sess.session_id, tid=t.tree_connect_id)
    mid = first.message["message_id"].get_value()
    check(status_of(conn, first) == 0, "first write failed")
    f.write(b"good", 0)
    # The very same signed bytes again: same MessageId, same signature.
    send_expect_disconnect(conn, sess, lambda: conn.send(
        write_req(f, b"EVIL"), sid=sess.session_id, tid=t.tree_connect_id, message_id=mid))
    check(is_dead(conn, sess), "connection still alive after a replayed MessageId")


def case_out_of_window(a):
    conn = connect(a.host, a.port)
    sess = login(conn, a.user, a.pw)
    t = tree(sess, a.host, a.share)
    f = create(t, "out_of_window.txt")
    far = conn.sequence_window["high"] + 1000
    send_expect_disconnect(conn, sess, lambda: conn.send(
        write_req(f, b"EVIL"), sid=sess.session_id, tid=t.tree_connect_id, message_id=far))
    check(is_dead(conn, sess), "connection still alive after an out-of-window MessageId")


def case_sealed_other_session(a):
    conn = connect(a.host, a.port)
    sess_a = login(conn, a.user, a.pw)
    sess_b = login(conn, a.user2, a.pw2)
    tb = tree(sess_b, a.host, a.share)
    f = create(tb, "sealed_other_session.txt")
    check(sess_a.encryption_key is not None, "no encryption key at 3.1.1")
    # Session B's WRITE, unsigned, sealed with session A's key (what a holder of A's key alone
    # could build).
    orig = conn._encrypt
    conn._encrypt = lambda data, session: orig(data, sess_a)
    sess_b.encrypt_data = True
    sess_b.signing_required = False
    send_expect_disconnect(conn, sess_a, lambda: conn.send(
        write_req(f, b"EVIL"), sid=sess_b.session_id, tid=tb.tree_connect_id))
    conn._encrypt = orig
    sess_b.encrypt_data = False
    sess_b.signing_required = True
    check(is_dead(conn, sess_a), "connection still alive after a mismatched sealed SessionId")


def case_fileid_other_tree(a):
    conn = connect(a.host, a.port)
    sess = login(conn, a.user, a.pw)
    t1 = tree(sess, a.host, a.share)
    t2 = tree(sess, a.host, a.share)
    f = create(t1, "fileid_other_tree.txt")
    r = conn.send(write_req(f, b"EVIL"), sid=sess.session_id, tid=t2.tree_connect_id)
    st = status_of(conn, r)
    check(st == STATUS_FILE_CLOSED, f"WRITE through another tree: status {st:#x}")
    req, _ = f.read(0, 4, send=False)
    r = conn.send(req, sid=sess.session_id, tid=t2.tree_connect_id)
    st = status_of(conn, r)
    check(st == STATUS_FILE_CLOSED, f"READ through another tree: status {st:#x}")
    # The handle still works through its own tree.
    check(f.read(0, 4) == b"good", "handle broken on its own tree")


def case_fileid_other_session(a):
    conn = connect(a.host, a.port)
    sess_a = login(conn, a.user, a.pw)
    sess_b = login(conn, a.user2, a.pw2)
    ta = tree(sess_a, a.host, a.share)
    tb = tree(sess_b, a.host, a.share)
    f = create(ta, "fileid_other_session.txt")
    r = conn.send(write_req(f, b"EVIL"), sid=sess_b.session_id, tid=tb.tree_connect_id)
    st = status_of(conn, r)
    check(st == STATUS_FILE_CLOSED, f"WRITE from another session: status {st:#x}")
    check(f.read(0, 4) == b"good", "handle broken in its own session")


def case_reauth_other_user(a):
    conn = connect(a.host, a.port)
    sess = login(conn, a.user, a.pw)
    t = tree(sess, a.host, a.share)
    f = create(t, "reauth_other_user.txt")
    st = reauth(conn, sess, a.host, a.user, a.pw)
    check(st == 0, f"reauthentication as the same user: status {st:#x}")
    st = reauth(conn, sess, a.host, a.user2, a.pw2)
    check(st == STATUS_ACCESS_DENIED, f"reauthentication as another user: status {st:#x}")
    # The session goes on, signed, as its own user.
    check(f.read(0, 4) == b"good", "session unusable after the refused reauthentication")
    st = reauth(conn, sess, a.host, a.user, a.pw)
    check(st == 0, f"reauthentication as the same user afterwards: status {st:#x}")


def case_reauth_unsigned(a):
    conn = connect(a.host, a.port)
    sess = login(conn, a.user, a.pw)
    t = tree(sess, a.host, a.share)
    f = create(t, "reauth_unsigned.txt")
    st = reauth(conn, sess, a.host, a.user, a.pw, sign=False)
    check(st == STATUS_ACCESS_DENIED, f"unsigned reauthentication: status {st:#x}")
    check(f.read(0, 4) == b"good", "session unusable after the refused reauthentication")


def lock_req(f, flags):
    el = SMB2LockElement()
    el["offset"] = 0
    el["length"] = 4
    el["flags"] = flags
    req = SMB2LockRequest()
    req["file_id"] = f.file_id
    req["locks"] = [el]
    return req


def case_cancel_unsigned(a):
    conn = connect(a.host, a.port)
    sess = login(conn, a.user, a.pw)
    t = tree(sess, a.host, a.share)
    f1 = create(t, "cancel_unsigned.txt")
    f2 = Open(t, "cancel_unsigned.txt")
    f2.create(ImpersonationLevel.Impersonation,
              FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE,
              FileAttributes.FILE_ATTRIBUTE_NORMAL,
              ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE,
              CreateDisposition.FILE_OPEN, CreateOptions.FILE_NON_DIRECTORY_FILE)
    r = conn.send(lock_req(f1, LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK
                           | LockFlags.SMB2_LOCKFLAG_FAIL_IMMEDIATELY),
                  sid=sess.session_id, tid=t.tree_connect_id)
    check(status_of(conn, r) == 0, "first lock failed")
    blocked = conn.send(lock_req(f2, LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK),
                        sid=sess.session_id, tid=t.tree_connect_id)
    deadline = time.time() + 5
    while blocked.async_id is None and time.time() < deadline:
        time.sleep(0.05)
    check(blocked.async_id is not None, "blocking lock did not go async")
    mid = blocked.message["message_id"].get_value()
    sess.signing_required = False
    conn.send(SMB2CancelRequest(), sid=sess.session_id, credit_request=0, message_id=mid,
              async_id=blocked.async_id)
    sess.signing_required = True
    time.sleep(0.5)
    check(blocked.response is None or blocked.response["status"].get_value() == NtStatus.STATUS_PENDING,
          "unsigned CANCEL answered the blocked lock")
    r = conn.send(lock_req(f1, LockFlags.SMB2_LOCKFLAG_UNLOCK), sid=sess.session_id,
                  tid=t.tree_connect_id)
    check(status_of(conn, r) == 0, "unlock failed")
    st = status_of(conn, blocked)
    check(st == 0, f"blocked lock ended with status {st:#x} (cancelled by an unsigned CANCEL?)")


def case_compound_bad_signature(a):
    conn = connect(a.host, a.port)
    sess = login(conn, a.user, a.pw)
    t = tree(sess, a.host, a.share)
    f = create(t, "compound_bad_signature.txt")
    flush = SMB2FlushRequest()
    flush["file_id"] = f.file_id
    write = write_req(f, b"EVIL")
    orig = conn._generate_signature
    lock = threading.Lock()

    def forge(b_header, key, mid, is_resp, cmd):
        # A good signature on the FLUSH, a wrong one on the related WRITE.
        if cmd == Commands.SMB2_WRITE:
            return b"\x00" * 16
        return orig(b_header, key, mid, is_resp, cmd)

    with lock:
        conn._generate_signature = forge
        reqs = conn.send_compound([flush, write], sess.session_id, t.tree_connect_id,
                                  related=True)
        conn._generate_signature = orig
    st_flush = status_of(conn, reqs[0])
    st_write = status_of(conn, reqs[1])
    check(st_flush == 0, f"FLUSH: status {st_flush:#x}")
    check(st_write == STATUS_ACCESS_DENIED, f"related WRITE with a bad signature: {st_write:#x}")


def bind_first_leg(a, sess, signature):
    """Status of the first SESSION_SETUP binding `sess` to a new connection; `signature` is
    "none" (unsigned), "wrong" (16 bytes that are not the MAC) or "good" (the session's key,
    MS-SMB2 3.2.5.3.1 / 3.3.5.5.2)."""
    c2 = connect(a.host, a.port)
    try:
        ctx = spnego.client(a.user, a.pw, service="cifs", hostname=a.host,
                            options=spnego.NegotiateOptions.session_key, protocol="negotiate")
        req = SMB2SessionSetupRequest()
        req["flags"] = SESSION_FLAG_BINDING
        req["security_mode"] = c2.client_security_mode
        req["buffer"] = ctx.step(c2.gss_negotiate_token)
        if signature != "none":
            # c2 signs with the session's key when it knows the session.
            c2.session_table[sess.session_id] = sess
        orig = c2._generate_signature
        if signature == "wrong":
            c2._generate_signature = lambda *args: b"\x01" * 16
        try:
            r = c2.send(req, sid=sess.session_id)
        finally:
            c2._generate_signature = orig
        signed = r.message["flags"].has_flag(Smb2Flags.SMB2_FLAGS_SIGNED)
        check(signed == (signature != "none"), f"{signature}: request signed={signed}")
        try:
            return status_of(c2, r)
        except Exception as e:  # dropped: also a refusal
            return repr(e)
    finally:
        # Not c2's session to log off: disconnect() would end it for the first connection.
        c2.session_table.pop(sess.session_id, None)
        try:
            c2.disconnect()
        except Exception:
            pass


def case_binding_signature(a):
    conn = connect(a.host, a.port)
    sess = login(conn, a.user, a.pw)
    t = tree(sess, a.host, a.share)
    create(t, "binding_signature.txt")
    st = bind_first_leg(a, sess, "good")
    check(st == NtStatus.STATUS_MORE_PROCESSING_REQUIRED,
          f"correctly signed binding: {st!r} (the server must accept it, or the probe shows nothing)")
    st = bind_first_leg(a, sess, "none")
    check(st in (STATUS_INVALID_PARAMETER, STATUS_ACCESS_DENIED), f"unsigned binding: {st!r}")
    st = bind_first_leg(a, sess, "wrong")
    check(st == STATUS_ACCESS_DENIED, f"binding with a wrong signature: {st!r}")
    print("binding refusals ok", flush=True)


def check_signed(conn, resp, session_id, what):
    """`resp` says it is signed and its MAC is the session's (smbprotocol alone only verifies
    messages that say they are signed)."""
    check(resp["flags"].has_flag(Smb2Flags.SMB2_FLAGS_SIGNED), f"{what} unsigned")
    try:
        conn.verify_signature(resp, session_id, force=True)
    except Exception as e:
        raise Fail(f"{what}: bad signature ({e})")


def case_async_final_signed(a):
    conn = connect(a.host, a.port)
    sess = login(conn, a.user, a.pw)
    t = tree(sess, a.host, a.share)
    f1 = create(t, "async_final_signed.txt")
    f2 = Open(t, "async_final_signed.txt")
    f2.create(ImpersonationLevel.Impersonation,
              FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE,
              FileAttributes.FILE_ATTRIBUTE_NORMAL,
              ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE,
              CreateDisposition.FILE_OPEN, CreateOptions.FILE_NON_DIRECTORY_FILE)
    r = conn.send(lock_req(f1, LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK
                           | LockFlags.SMB2_LOCKFLAG_FAIL_IMMEDIATELY),
                  sid=sess.session_id, tid=t.tree_connect_id)
    check(status_of(conn, r) == 0, "first lock failed")
    blocked = conn.send(lock_req(f2, LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK),
                        sid=sess.session_id, tid=t.tree_connect_id)
    deadline = time.time() + 5
    while blocked.async_id is None and time.time() < deadline:
        time.sleep(0.05)
    check(blocked.async_id is not None, "blocking lock did not go async")
    r = conn.send(lock_req(f1, LockFlags.SMB2_LOCKFLAG_UNLOCK), sid=sess.session_id,
                  tid=t.tree_connect_id)
    check(status_of(conn, r) == 0, "unlock failed")
    st = status_of(conn, blocked)
    check(st == 0, f"blocked lock ended with status {st:#x}")
    final = blocked.response
    check(final["flags"].has_flag(Smb2Flags.SMB2_FLAGS_ASYNC_COMMAND), "final response not async")
    check_signed(conn, final, sess.session_id, "final async response")
    print("async final response signed", flush=True)


def case_logoff_signed(a):
    conn = connect(a.host, a.port)
    sess = login(conn, a.user, a.pw)
    f = create(tree(sess, a.host, a.share), "logoff_signed.txt")
    f.close()
    req = conn.send(SMB2Logoff(), sid=sess.session_id)
    check(status_of(conn, req) == 0, "logoff failed")
    resp = req.response
    # MS-SMB2 3.3.4.1.1: a signed request gets a signed response, LOGOFF included, although
    # the session is gone once it is answered.
    check_signed(conn, resp, sess.session_id, "LOGOFF response")
    print("logoff response signed", flush=True)


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


class Args:
    pass


def main():
    a = Args()
    a.host, port, a.share, a.user, a.pw, a.user2, a.pw2, case = sys.argv[1:9]
    a.port = int(port)
    try:
        CASES[case](a)
    except Fail as e:
        print(f"FAIL {case}: {e}")
        sys.exit(1)
    print(f"PASS {case}")


if __name__ == "__main__":
    main()
