#!/usr/bin/env python3
"""Cross-node scenarios for the smbd cluster, with two smbprotocol clients on two nodes.

usage: cluster_client.py HOST[,HOST2] PORT1 PORT2 USER PASSWORD SCENARIO
SCENARIO: sharemode | brl | blocking | oplock | lease | doc | kill | lmrestart | lmfailover | rename
          | leaseh | streams | links | notify | notifytree | notifylm | notifylmtree
          | notifylmfailover | dotdot | writetime | outsidetime | streamtime | durabletime
          | twowriters
Prints "PASS SCENARIO" and exits 0 when the cluster behaved; any mismatch raises (exit 1).
`kill` prints "KILL-NODE2" once node 2's client holds its lock and node 1's client waits,
then reads one line from stdin (the harness has SIGKILLed node 2's smbd) and expects node 1's
waiting lock to be granted.

smbprotocol has no API for unsolicited server messages (its receive thread dies on the
MessageId 0xFFFFFFFFFFFFFFFF of an oplock/lease break), so a sink is registered under that
MessageId to collect them, and break acknowledgements are sent as raw SMB2 OPLOCK_BREAK
bodies (MS-SMB2 2.2.24.1, 2.2.24.2).
"""
import os
import struct
import sys
import threading
import time
import uuid

from smbprotocol.connection import Connection
from smbprotocol.create_contexts import (CreateContextName, SMB2CreateContextRequest,
                                         SMB2CreateDurableHandleResponseV2,
                                         SMB2CreateResponseLease, SMB2CreateResponseLeaseV2)
from smbprotocol.exceptions import SMBResponseException
from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes,
                              FilePipePrinterAccessMask as A, ImpersonationLevel, LockFlags,
                              Open, ShareAccess, SMB2LockElement)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

TIMEOUT = 20.0
SHARING_VIOLATION = 0xC0000043
LOCK_NOT_GRANTED = 0xC0000055
FILE_LOCK_CONFLICT = 0xC0000054
DELETE_PENDING = 0xC0000056
NOT_FOUND = 0xC0000034
OPLOCK_BATCH = 0x09
OPLOCK_LEVEL_II = 0x01
OPLOCK_LEASE = 0xFF
SMB2_OPLOCK_BREAK = 0x12
SMB2_SET_INFO = 0x11
SMB2_QUERY_INFO = 0x10
ACCESS_DENIED = 0xC0000022
BREAK_MID = 0xFFFFFFFFFFFFFFFF
RWH = 0x7
RH = 0x3
R = 0x1


class _Zero:
    def get_value(self):
        return 0


class BreakSink:
    """Stands in for smbprotocol's Request under MessageId 0xFFFF...: collects breaks."""

    def __init__(self):
        self.async_id = None
        self.session_id = None
        self.message = {"reserved": _Zero()}
        self.response_event = threading.Event()
        self.response_event_lock = threading.Lock()
        self.cond = threading.Condition()
        self.bodies = []

    @property
    def response(self):
        return None

    @response.setter
    def response(self, header):
        with self.cond:
            self.bodies.append(header["data"].get_value())
            self.cond.notify_all()

    def wait(self, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.bodies:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("no break notification arrived")
                self.cond.wait(left)
            return self.bodies.pop(0)

    def none_within(self, seconds):
        time.sleep(seconds)
        with self.cond:
            return not self.bodies


class Raw:
    """A request body smbprotocol sends as is."""

    def __init__(self, command, body):
        self.COMMAND = command
        self.body = body

    def pack(self):
        return self.body

    def __len__(self):
        return len(self.body)


class RawIoctl(Raw):
    """An IOCTL body sent as is; smbprotocol reads its buffer and maximum output size for
    the credit charge (an FSCTL code it does not know cannot go through its own class)."""

    class _Value:
        def __init__(self, v):
            self.v = v

        def get_value(self):
            return self.v

    def __init__(self, body):
        super().__init__(0x0B, body)

    def __getitem__(self, key):
        return {"buffer": b"", "max_output_response": self._Value(0)}[key]


class Client:
    def __init__(self, host, port, user, password, share="data"):
        self.conn = Connection(uuid.uuid4(), host, port, require_signing=False)
        self.conn.connect()
        self.sink = BreakSink()
        self.conn.outstanding_requests[BREAK_MID] = self.sink
        self.sess = Session(self.conn, user, password, require_encryption=False)
        self.sess.connect()
        self.tree = TreeConnect(self.sess, rf"\\{host}\{share}")
        self.tree.connect()

    def open(self, name, access=A.GENERIC_READ | A.GENERIC_WRITE,
             share=ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE,
             disposition=CreateDisposition.FILE_OPEN_IF, options=0, oplock=0, lease_key=None,
             lease_state=RWH, is_dir=False, durable_v2=False):
        f = Open(self.tree, name)
        contexts = None
        if lease_key is not None:
            ctx = SMB2CreateContextRequest()
            ctx["buffer_name"] = CreateContextName.SMB2_CREATE_REQUEST_LEASE
            ctx["buffer_data"] = lease_key + struct.pack("<IIQ", lease_state, 0, 0)
            contexts = [ctx]
            oplock = OPLOCK_LEASE
        if durable_v2:
            # DH2Q (MS-SMB2 2.2.13.2.11): Timeout 60 s, Flags 0, Reserved, CreateGuid.
            ctx = SMB2CreateContextRequest()
            ctx["buffer_name"] = b"DH2Q"
            ctx["buffer_data"] = struct.pack("<IIQ", 60_000, 0, 0) + uuid.uuid4().bytes
            contexts = (contexts or []) + [ctx]
        if is_dir:
            attrs = FileAttributes.FILE_ATTRIBUTE_DIRECTORY
            options |= CreateOptions.FILE_DIRECTORY_FILE
        else:
            attrs = FileAttributes.FILE_ATTRIBUTE_NORMAL
            options |= CreateOptions.FILE_NON_DIRECTORY_FILE
        resp = f.create(ImpersonationLevel.Impersonation, access, attrs, share, disposition,
                        options, create_contexts=contexts, oplock_level=oplock)
        f.lease_response = resp
        return f

    def ack_oplock(self, f, level):
        body = struct.pack("<HBBI", 24, level, 0, 0) + f.file_id
        req = self.conn.send(Raw(SMB2_OPLOCK_BREAK, body), self.sess.session_id,
                             self.tree.tree_connect_id)
        self.conn.receive(req, timeout=TIMEOUT)

    def ack_lease(self, key, state):
        body = struct.pack("<HHI", 36, 0, 0) + key + struct.pack("<IQ", state, 0)
        req = self.conn.send(Raw(SMB2_OPLOCK_BREAK, body), self.sess.session_id,
                             self.tree.tree_connect_id)
        self.conn.receive(req, timeout=TIMEOUT)

    def rename(self, f, new_name, replace=False):
        """SET_INFO FileRenameInformation (MS-SMB2 2.2.39, MS-FSCC 2.4.37) as a raw request."""
        name = new_name.encode("utf-16-le")
        info = struct.pack("<B7xQI", 1 if replace else 0, 0, len(name)) + name
        body = struct.pack("<HBBIHHI", 33, 1, 10, len(info), 64 + 32, 0, 0) + f.file_id + info
        req = self.conn.send(Raw(SMB2_SET_INFO, body), self.sess.session_id,
                             self.tree.tree_connect_id)
        self.conn.receive(req, timeout=TIMEOUT)

    def set_delete_pending(self, f):
        """SET_INFO FileDispositionInformation (MS-FSCC 2.4.11) DeletePending = TRUE."""
        info = struct.pack("<B", 1)
        body = struct.pack("<HBBIHHI", 33, 1, 13, len(info), 64 + 32, 0, 0) + f.file_id + info
        req = self.conn.send(Raw(SMB2_SET_INFO, body), self.sess.session_id,
                             self.tree.tree_connect_id)
        self.conn.receive(req, timeout=TIMEOUT)

    def standard_info(self, f):
        """QUERY_INFO FileStandardInformation (MS-FSCC 2.4.41) as a raw request:
        (NumberOfLinks, DeletePending)."""
        body = struct.pack("<HBBIHHIII", 41, 1, 5, 24, 0, 0, 0, 0, 0) + f.file_id
        req = self.conn.send(Raw(SMB2_QUERY_INFO, body), self.sess.session_id,
                             self.tree.tree_connect_id)
        resp = self.conn.receive(req, timeout=TIMEOUT)
        data = resp["data"].get_value()
        offset, length = struct.unpack("<HI", data[2:8])
        info = data[offset - 64:offset - 64 + length]
        links, delete_pending = struct.unpack("<IB", info[16:21])
        return links, delete_pending

    def basic_info(self, f):
        """QUERY_INFO FileBasicInformation (MS-FSCC 2.4.7): (CreationTime, LastAccessTime,
        LastWriteTime, ChangeTime, FileAttributes)."""
        body = struct.pack("<HBBIHHIII", 41, 1, 4, 40, 0, 0, 0, 0, 0) + f.file_id
        req = self.conn.send(Raw(SMB2_QUERY_INFO, body), self.sess.session_id,
                             self.tree.tree_connect_id)
        resp = self.conn.receive(req, timeout=TIMEOUT)
        data = resp["data"].get_value()
        offset, length = struct.unpack("<HI", data[2:8])
        info = data[offset - 64:offset - 64 + length]
        return struct.unpack("<QQQQI", info[:36])

    def set_write_time(self, f, ft):
        """SET_INFO FileBasicInformation with only LastWriteTime (MS-FSCC 2.4.7)."""
        info = struct.pack("<QQQQII", 0, 0, ft, 0, 0, 0)
        body = struct.pack("<HBBIHHI", 33, 1, 4, len(info), 64 + 32, 0, 0) + f.file_id + info
        req = self.conn.send(Raw(SMB2_SET_INFO, body), self.sess.session_id,
                             self.tree.tree_connect_id)
        self.conn.receive(req, timeout=TIMEOUT)

    def close(self):
        try:
            self.conn.disconnect(True)
        except Exception:
            pass


def lock_el(offset, length, exclusive=True, fail=True, unlock=False):
    e = SMB2LockElement()
    e["offset"] = offset
    e["length"] = length
    if unlock:
        e["flags"] = LockFlags.SMB2_LOCKFLAG_UNLOCK
    else:
        flags = LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK if exclusive else LockFlags.SMB2_LOCKFLAG_SHARED_LOCK
        if fail:
            flags |= LockFlags.SMB2_LOCKFLAG_FAIL_IMMEDIATELY
        e["flags"] = flags
    return e


def expect_status(status, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except SMBResponseException as e:
        assert e.status == status, f"expected 0x{status:08x}, got 0x{e.status:08x}"
        return
    raise AssertionError(f"expected 0x{status:08x}, the operation succeeded")


class Background:
    """Runs fn in a thread; result() re-raises its exception."""

    def __init__(self, fn, *args, **kw):
        self.value = None
        self.error = None
        self.done = threading.Event()

        def run():
            try:
                self.value = fn(*args, **kw)
            except BaseException as e:  # noqa: BLE001 - re-raised in result()
                self.error = e
            finally:
                self.done.set()

        self.t = threading.Thread(target=run, daemon=True)
        self.t.start()

    def result(self, timeout=TIMEOUT):
        if not self.done.wait(timeout):
            raise AssertionError("background operation did not finish")
        if self.error is not None:
            raise self.error
        return self.value


def sharemode(c1, c2):
    f2 = c2.open("share.txt", share=0)
    expect_status(SHARING_VIOLATION, c1.open, "share.txt")
    f2.close()
    c1.open("share.txt").close()


def brl(c1, c2):
    f2 = c2.open("brl.txt")
    f2.write(b"x" * 100, 0)
    f2.lock([lock_el(0, 10)])
    f1 = c1.open("brl.txt")
    expect_status(LOCK_NOT_GRANTED, f1.lock, [lock_el(5, 10)])
    # MS-FSA 2.1.4.10: I/O is checked against other opens' locks, also across nodes.
    expect_status(FILE_LOCK_CONFLICT, f1.write, b"y", 2)
    f1.lock([lock_el(10, 10)])
    f2.lock([lock_el(0, 10, unlock=True)])
    f1.lock([lock_el(0, 10)])
    f1.close()
    f2.close()


def iogrant(c1, c2):
    # Node 1 writes a file nobody locks: its first write brings an I/O grant from lockmgrd,
    # and its later reads and writes ask lockmgrd nothing.
    f1 = c1.open("iogrant.txt")
    f1.write(b"a" * 100, 0)
    f1.write(b"b" * 10, 0)
    # Node 2 locks a range: lockmgrd recalls node 1's grant and grants the lock only once
    # node 1 acknowledged, so node 1's next write into the range is checked and refused.
    f2 = c2.open("iogrant.txt")
    f2.write(b"c" * 10, 50)
    f2.lock([lock_el(0, 10)])
    expect_status(FILE_LOCK_CONFLICT, f1.write, b"y", 2)
    f1.write(b"z", 20)
    f2.lock([lock_el(0, 10, unlock=True)])
    f1.write(b"y", 2)
    f1.close()
    f2.close()


def blocking(c1, c2):
    f2 = c2.open("block.txt")
    f2.lock([lock_el(0, 10)])
    f1 = c1.open("block.txt")
    waiter = Background(f1.lock, [lock_el(0, 10, fail=False)])
    time.sleep(0.5)
    assert not waiter.done.is_set(), "the blocking lock was granted while node 2 held it"
    f2.lock([lock_el(0, 10, unlock=True)])
    waiter.result()
    # Granted to node 1 only: node 2 cannot take it back.
    expect_status(LOCK_NOT_GRANTED, f2.lock, [lock_el(0, 10)])
    f1.close()
    f2.close()


def oplock(c1, c2):
    f2 = c2.open("oplock.txt", oplock=OPLOCK_BATCH)
    assert f2.oplock_level == OPLOCK_BATCH, f"batch oplock not granted: {f2.oplock_level}"
    opener = Background(c1.open, "oplock.txt")
    body = c2.sink.wait()
    size, new_level = struct.unpack("<HB", body[:3])
    assert size == 24, f"expected an oplock break, got structure size {size}"
    assert new_level in (OPLOCK_LEVEL_II, 0), f"break to {new_level}"
    assert body[8:24] == f2.file_id, "break names another file id"
    assert not opener.done.is_set(), "node 1's create finished before the break was acked"
    c2.ack_oplock(f2, new_level)
    f1 = opener.result()
    f1.close()
    f2.close()


# Samba's test-only FSCTL_SMBTORTURE_FORCE_UNACKED_TIMEOUT: the server takes nothing sent on
# this channel as acknowledged by TCP from now on.
FSCTL_SMBTORTURE_FORCE_UNACKED_TIMEOUT = 0x83848003


def deadclient(c1, c2):
    """A client that stops acknowledging at the TCP level while it holds a batch oplock (dead,
    or cut off; the FSCTL stands in for the cut, as in smbtorture's channel-failure tests): once
    the break goes unacknowledged for six retransmission timeouts the server drops the channel,
    the open goes with it, and the other client's open proceeds. Without that it waits for the
    break timeout (35 s, MS-SMB2 3.3.2.1) and the dead client's connection stays."""
    f2 = c2.open("deadclient.txt", oplock=OPLOCK_BATCH)
    assert f2.oplock_level == OPLOCK_BATCH, f"batch oplock not granted: {f2.oplock_level}"
    # SMB2 IOCTL (MS-SMB2 2.2.31), FileId all ones, no input, flags SMB2_0_IOCTL_IS_FSCTL.
    body = struct.pack("<HHI16sIIIIIIII", 57, 0, FSCTL_SMBTORTURE_FORCE_UNACKED_TIMEOUT,
                       b"\xff" * 16, 120, 0, 0, 120, 0, 0, 1, 0) + b"\0"
    req = c2.conn.send(RawIoctl(body), c2.sess.session_id, c2.tree.tree_connect_id)
    c2.conn.receive(req, timeout=TIMEOUT)
    opener = Background(c1.open, "deadclient.txt")
    body = c2.sink.wait()
    assert struct.unpack("<H", body[:2])[0] == 24, "expected an oplock break"
    # Never acknowledged. Long enough for the break timeout too: without the channel check the
    # open completes after it, and the checks below tell the difference.
    f1 = opener.result(timeout=60)
    try:
        c2.conn.echo(timeout=10)
        alive = True
    except Exception:  # noqa: BLE001 - any failure means the channel is gone
        alive = False
    assert not alive, "the client that never acknowledged its break still has its channel"
    f1.close()


def lease(c1, c2):
    key = uuid.uuid4().bytes
    f2 = c2.open("lease.txt", lease_key=key, lease_state=RWH)
    assert f2.oplock_level == OPLOCK_LEASE, f"no lease: {f2.oplock_level}"
    assert f2.lease_response, "no lease create context in the response"
    granted = f2.lease_response[0]["lease_state"].get_value()
    assert granted == RWH, f"lease state 0x{granted:x}"
    opener = Background(c1.open, "lease.txt")
    body = c2.sink.wait()
    size, _epoch, flags = struct.unpack("<HHI", body[:8])
    assert size == 44, f"expected a lease break, got structure size {size}"
    assert body[8:24] == key, "break names another lease key"
    current, new = struct.unpack("<II", body[24:32])
    assert current == RWH, f"current state 0x{current:x}"
    assert new == RH, f"new state 0x{new:x}"
    assert flags & 1, "ack required flag missing"
    assert not opener.done.is_set(), "node 1's create finished before the lease break was acked"
    c2.ack_lease(key, new)
    f1 = opener.result()
    f1.close()
    f2.close()


def doc(c1, c2):
    all_share = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
    f2 = c2.open("doc.txt", access=A.GENERIC_READ | A.DELETE, share=all_share,
                 disposition=CreateDisposition.FILE_OVERWRITE_IF,
                 options=CreateOptions.FILE_DELETE_ON_CLOSE)
    f1 = c1.open("doc.txt", access=A.GENERIC_READ, share=all_share)
    f2.close()
    # Node 2's close left the file delete-pending while node 1 still has it open.
    expect_status(DELETE_PENDING, c1.open, "doc.txt", access=A.GENERIC_READ, share=all_share)
    f1.close()
    # Node 1 closed the last open: the file is gone, on every node.
    expect_status(NOT_FOUND, c2.open, "doc.txt", access=A.GENERIC_READ,
                  disposition=CreateDisposition.FILE_OPEN)
    expect_status(NOT_FOUND, c1.open, "doc.txt", access=A.GENERIC_READ,
                  disposition=CreateDisposition.FILE_OPEN)


def kill(c1, c2):
    f2 = c2.open("kill.txt")
    f2.lock([lock_el(0, 10)])
    f1 = c1.open("kill.txt")
    waiter = Background(f1.lock, [lock_el(0, 10, fail=False)])
    time.sleep(0.5)
    assert not waiter.done.is_set(), "the blocking lock was granted while node 2 held it"
    print("KILL-NODE2", flush=True)
    sys.stdin.readline()
    waiter.result()
    # Granted once: node 2's lock is gone, node 1 holds it now.
    f1.lock([lock_el(0, 10, unlock=True)])
    f1.close()


def leaseh(c1, c2):
    """Issue 12 item 6 (MS-FSA 2.1.5.17.2): a plain open (no oplock, no lease) on node 2 does
    not cost node 1's lease its handle caching: RWH is granted as RH, with a durable handle
    (DH2Q), where only an oplock holder would take H away."""
    f2 = c2.open("leaseh.txt", access=A.GENERIC_READ)
    key = uuid.uuid4().bytes
    f1 = c1.open("leaseh.txt", lease_key=key, lease_state=RWH, durable_v2=True)
    assert f1.oplock_level == OPLOCK_LEASE, f"no lease: {f1.oplock_level}"
    granted = lease_state_of(f1)
    assert granted == RH, f"lease state 0x{granted:x} next to a plain open (want RH)"
    assert durable_v2_granted(f1), "no durable handle next to a plain open"
    f1.close()
    # A Level II oplock holder does take handle caching away from a new lease.
    f2.close()
    f2 = c2.open("leaseh.txt", access=A.GENERIC_READ, oplock=OPLOCK_LEVEL_II)
    assert f2.oplock_level == OPLOCK_LEVEL_II, f"oplock 0x{f2.oplock_level:x}"
    f1 = c1.open("leaseh.txt", access=A.GENERIC_READ, lease_key=uuid.uuid4().bytes,
                 lease_state=RH)
    granted = lease_state_of(f1)
    assert granted == R, f"lease state 0x{granted:x} next to a Level II oplock (want R)"
    f1.close()
    f2.close()


def streams(c1, c2):
    """Issue 12 item 3 (MS-FSA 2.1.5.1.2.1): a named stream shares its file's delete state.
    A stream open on node 2 without FILE_SHARE_DELETE stops node 1 from opening the file for
    DELETE; once the file is delete-pending, opens of its streams fail with DELETE_PENDING."""
    all_share = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
    base = c1.open("streams.txt", share=all_share, disposition=CreateDisposition.FILE_OVERWRITE_IF)
    base.close()
    s2 = c2.open("streams.txt:s1", share=ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE)
    s2.write(b"stream data", 0)
    expect_status(SHARING_VIOLATION, c1.open, "streams.txt", access=A.DELETE, share=all_share,
                  disposition=CreateDisposition.FILE_OPEN)
    s2.close()
    d1 = c1.open("streams.txt", access=A.DELETE | A.FILE_READ_ATTRIBUTES, share=all_share,
                 disposition=CreateDisposition.FILE_OPEN)
    c1.set_delete_pending(d1)
    expect_status(DELETE_PENDING, c2.open, "streams.txt:s1", access=A.GENERIC_READ,
                  share=all_share, disposition=CreateDisposition.FILE_OPEN)
    d1.close()
    expect_status(NOT_FOUND, c2.open, "streams.txt:s1", access=A.GENERIC_READ,
                  share=all_share, disposition=CreateDisposition.FILE_OPEN)


def links(c1, c2):
    """Issue 12 item 9 (MS-FSA 2.1.5.14.3, 2.1.5.11.27): delete-pending belongs to a link.
    links-a.txt and links-b.txt are two hard links of one file (the harness makes them).
    Node 1 makes links-a.txt delete-pending: node 2's handle of links-a.txt reports
    DeletePending (it did not set it itself), its handle of links-b.txt does not; links-a.txt
    refuses opens with DELETE_PENDING while links-b.txt opens. The last close of links-a.txt
    removes that name only."""
    all_share = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
    a1 = c1.open("links-a.txt", access=A.DELETE | A.FILE_READ_ATTRIBUTES, share=all_share,
                 disposition=CreateDisposition.FILE_OPEN)
    a2 = c2.open("links-a.txt", access=A.GENERIC_READ, share=all_share,
                 disposition=CreateDisposition.FILE_OPEN)
    b2 = c2.open("links-b.txt", access=A.GENERIC_READ, share=all_share,
                 disposition=CreateDisposition.FILE_OPEN)
    assert c2.standard_info(a2) == (2, 0), f"before: {c2.standard_info(a2)}"
    c1.set_delete_pending(a1)
    assert c2.standard_info(a2) == (1, 1), f"other handle of the deleted link: {c2.standard_info(a2)}"
    assert c1.standard_info(a1) == (1, 1), f"the deleting handle: {c1.standard_info(a1)}"
    assert c2.standard_info(b2) == (1, 0), f"handle of the other link: {c2.standard_info(b2)}"
    expect_status(DELETE_PENDING, c2.open, "links-a.txt", access=A.GENERIC_READ, share=all_share,
                  disposition=CreateDisposition.FILE_OPEN)
    c1.open("links-b.txt", access=A.GENERIC_READ, share=all_share,
            disposition=CreateDisposition.FILE_OPEN).close()
    a1.close()
    a2.close()
    expect_status(NOT_FOUND, c1.open, "links-a.txt", access=A.GENERIC_READ,
                  disposition=CreateDisposition.FILE_OPEN)
    assert b2.read(0, 5) == b"links", "the other link lost its data"
    assert c2.standard_info(b2) == (1, 0), f"after: {c2.standard_info(b2)}"
    b2.close()
    c1.open("links-b.txt", access=A.GENERIC_READ, disposition=CreateDisposition.FILE_OPEN).close()


def lease_state_of(f):
    for c in f.lease_response or []:
        if isinstance(c, (SMB2CreateResponseLease, SMB2CreateResponseLeaseV2)):
            return c["lease_state"].get_value()
    raise AssertionError("no lease create context in the response")


def durable_v2_granted(f):
    return any(isinstance(c, SMB2CreateDurableHandleResponseV2) for c in f.lease_response or [])

REQUEST_NOT_ACCEPTED = 0xC00000D0


def rename(c1, c2):
    """Rename conflicts are cluster wide. A rename opens the new name's directory asking to
    add a child and sharing read and write (Windows' I/O manager; conn/ops/info.rs): node 2's
    open of that directory that does not share write, or that holds DELETE access, stops
    node 1's rename; one that shares read and write without DELETE does not (smbtorture
    smb2.notify.mask-change). Node 2's open of the replaced target stops it too."""
    dirname = "rendir-%d" % int(time.time() * 1000)
    # FILE_READ_DATA is FILE_LIST_DIRECTORY on a directory.
    d = c2.open(dirname, access=A.FILE_READ_DATA | A.FILE_READ_ATTRIBUTES,
                share=ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_DELETE,
                disposition=CreateDisposition.FILE_CREATE, is_dir=True)
    f = c1.open(dirname + "\\a.txt", access=A.GENERIC_READ | A.GENERIC_WRITE | A.DELETE,
                share=ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_DELETE)
    expect_status(SHARING_VIOLATION, c1.rename, f, dirname + "\\b.txt")
    d.close()
    all_share = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
    d = c2.open(dirname, access=A.FILE_READ_DATA | A.FILE_READ_ATTRIBUTES | A.DELETE,
                share=all_share, disposition=CreateDisposition.FILE_OPEN, is_dir=True)
    expect_status(SHARING_VIOLATION, c1.rename, f, dirname + "\\b.txt")
    d.close()
    # Sharing read and write without DELETE access: no conflict, on either node.
    d = c2.open(dirname, access=A.FILE_READ_DATA | A.FILE_READ_ATTRIBUTES,
                share=ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE,
                disposition=CreateDisposition.FILE_OPEN, is_dir=True)
    c1.rename(f, dirname + "\\b.txt")
    d.close()
    target = c2.open("ren-target.txt", access=A.GENERIC_READ,
                     share=ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE |
                     ShareAccess.FILE_SHARE_DELETE)
    expect_status(ACCESS_DENIED, c1.rename, f, "ren-target.txt", replace=True)
    target.close()
    c1.rename(f, "ren-target.txt", replace=True)
    f.close()
    c2.open("ren-target.txt", access=A.GENERIC_READ,
            disposition=CreateDisposition.FILE_OPEN).close()



def lmrestart(c1, c2):
    """lockmgrd dies while node 1's client holds a lock and comes back: node 1 must drop that
    client's connection (its lock is enforced nowhere now), and the range is free for node 2."""
    f1 = c1.open("lmrestart.txt")
    f1.lock([lock_el(0, 10)])
    print("RESTART-LOCKMGRD", flush=True)
    sys.stdin.readline()
    deadline = time.time() + TIMEOUT
    while True:
        try:
            f1.lock([lock_el(20, 10)])
        except SMBResponseException as e:
            # Node 1 found out with this request (REQUEST_NOT_ACCEPTED); the drop follows.
            assert e.status == REQUEST_NOT_ACCEPTED, f"unexpected status 0x{e.status:08x}"
        except Exception:
            break  # the connection is gone, as it must be
        else:
            raise AssertionError("the handle kept working after lockmgrd lost its lock")
        assert time.time() < deadline, "node 1 never dropped the connection"
        time.sleep(0.1)
    # Nobody holds the old lock any more: node 2's client gets it (once node 2 reconnected).
    while True:
        try:
            f2 = c2.open("lmrestart.txt")
            break
        except SMBResponseException as e:
            assert e.status == REQUEST_NOT_ACCEPTED and time.time() < deadline, f"0x{e.status:08x}"
            time.sleep(0.2)
    f2.lock([lock_el(0, 10)])
    f2.lock([lock_el(0, 10, unlock=True)])
    f2.close()


def lmfailover(c1, c2):
    """The replicated lock manager's primary dies while node 1's client holds a lock: the
    standby takes over, both nodes resume their sessions on it, and nothing is lost: node 1's
    handle keeps working and keeps its lock (node 2's client still conflicts with it)."""
    f1 = c1.open("lmfailover.txt")
    f1.lock([lock_el(0, 10)])
    f2 = c2.open("lmfailover.txt")
    expect_status(LOCK_NOT_GRANTED, f2.lock, [lock_el(0, 10)])
    print("FAILOVER-LOCKMGRD", flush=True)
    sys.stdin.readline()
    started = time.time()
    # The same handle, on the same connection, goes on: a new lock and a write.
    f1.lock([lock_el(20, 10)])
    took = time.time() - started
    f1.write(b"after failover", 0)
    # The lock taken before the failover is still enforced across nodes.
    expect_status(LOCK_NOT_GRANTED, f2.lock, [lock_el(0, 10)])
    f1.lock([lock_el(0, 10, unlock=True)])
    f2.lock([lock_el(0, 10)])
    expect_status(LOCK_NOT_GRANTED, f1.lock, [lock_el(5, 1)])
    f2.lock([lock_el(0, 10, unlock=True)])
    f1.close()
    f2.close()
    print("first lock after the primary's death took %.3f s" % took)


FILE_NOTIFY_CHANGE_FILE_NAME = 0x1
ADDED, REMOVED, MODIFIED, OLD_NAME, NEW_NAME = 1, 2, 3, 4, 5


def notify(c1, c2):
    """Issue 12, change notify (MS-SMB2 3.3.5.19, MS-FSCC 2.7.1): node 1's client watches a
    directory for file-name changes (FILE_NOTIFY_CHANGE_FILE_NAME only); node 2's client makes
    a subdirectory (not reported: DIR_NAME is not in the filter), creates, renames and deletes
    a file there; a file is also created directly in the directory, not through SMB (its path
    comes in $NOTIFY_SHARE_DIR). Node 1's client must get exactly these changes, in order, each
    once: ADDED, OLD_NAME + NEW_NAME, REMOVED, then ADDED of the direct file."""
    import os
    all_share = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
    d = c1.open("notify-dir", access=A.FILE_READ_DATA | A.FILE_READ_ATTRIBUTES,
                share=all_share, disposition=CreateDisposition.FILE_OPEN_IF, is_dir=True)
    from smbprotocol.change_notify import FileSystemWatcher
    got = []

    def watch():
        w = FileSystemWatcher(d)
        w.start(FILE_NOTIFY_CHANGE_FILE_NAME)
        return w

    def collect(w, n):
        while True:
            if not w.response_event.wait(TIMEOUT):
                raise AssertionError(f"no change notify response; so far {got}")
            got.extend((a["action"].get_value(), a["file_name"].get_value()) for a in w.wait())
            if len(got) >= n:
                return
            w = watch()

    w = watch()
    c2.open("notify-dir\\sub", access=A.GENERIC_READ, share=all_share,
            disposition=CreateDisposition.FILE_CREATE, is_dir=True).close()
    f = c2.open("notify-dir\\a.txt", access=A.GENERIC_READ | A.GENERIC_WRITE | A.DELETE,
                share=all_share, disposition=CreateDisposition.FILE_CREATE)
    c2.rename(f, "notify-dir\\b.txt")
    c2.set_delete_pending(f)
    f.close()
    collect(w, 4)
    fd = os.open(os.path.join(os.environ["NOTIFY_SHARE_DIR"], "notify-dir", "direct.txt"),
                 os.O_CREAT | os.O_WRONLY, 0o644)
    os.close(fd)
    collect(watch(), 5)
    want = [(ADDED, "a.txt"), (OLD_NAME, "a.txt"), (NEW_NAME, "b.txt"), (REMOVED, "b.txt"),
            (ADDED, "direct.txt")]
    assert got == want, f"changes {got}, want {want}"
    d.close()


def notifytree(c1, c2):
    """Issue 12, SMB2_WATCH_TREE (MS-SMB2 2.2.35; smbtorture smb2.notify.tree stops earlier):
    a handle watching the tree gets the changes below its directory under their path from it,
    a second handle of the same directory without WATCH_TREE only those in it. Both clients on
    one node: another node's changes below the watched directory reach it only through that
    node's reports (not implemented across nodes yet)."""
    all_share = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
    from smbprotocol.change_notify import FileSystemWatcher
    names = FILE_NOTIFY_CHANGE_FILE_NAME | 0x2
    tree = c1.open("notify-tree", access=A.FILE_READ_DATA | A.FILE_READ_ATTRIBUTES,
                   share=all_share, disposition=CreateDisposition.FILE_OPEN_IF, is_dir=True)
    flat = c1.open("notify-tree", access=A.FILE_READ_DATA | A.FILE_READ_ATTRIBUTES,
                   share=all_share, disposition=CreateDisposition.FILE_OPEN, is_dir=True)

    def collect(d, flags, n):
        got = []
        while len(got) < n:
            w = FileSystemWatcher(d)
            w.start(names, flags=flags)
            if not w.response_event.wait(TIMEOUT):
                raise AssertionError(f"no change notify response; so far {got}")
            got.extend((a["action"].get_value(), a["file_name"].get_value()) for a in w.wait())
        return got

    # The first request makes each handle's watch (its filter and WATCH_TREE are kept).
    wt = FileSystemWatcher(tree)
    wt.start(names, flags=1)
    wf = FileSystemWatcher(flat)
    wf.start(names, flags=0)
    c2.open("notify-tree\\sub", access=A.GENERIC_READ, share=all_share,
            disposition=CreateDisposition.FILE_CREATE, is_dir=True).close()
    c2.open("notify-tree\\sub\\x.txt", access=A.GENERIC_READ | A.GENERIC_WRITE, share=all_share,
            disposition=CreateDisposition.FILE_CREATE).close()
    c2.open("notify-tree\\y.txt", access=A.GENERIC_READ | A.GENERIC_WRITE, share=all_share,
            disposition=CreateDisposition.FILE_CREATE).close()
    for w, d, flags, want in ((wt, tree, 1, [(ADDED, "sub"), (ADDED, "sub\\x.txt"), (ADDED, "y.txt")]),
                              (wf, flat, 0, [(ADDED, "sub"), (ADDED, "y.txt")])):
        if not w.response_event.wait(TIMEOUT):
            raise AssertionError("no change notify response")
        got = [(a["action"].get_value(), a["file_name"].get_value()) for a in w.wait()]
        if len(got) < len(want):
            got += collect(d, flags, len(want) - len(got))
        assert got == want, f"WATCH_TREE={flags}: changes {got}, want {want}"
    tree.close()
    flat.close()


def watch_dir(c, name, filt):
    """Opens directory `name` (created if missing) through client `c` and starts a
    CHANGE_NOTIFY on it with `filt`, pending on the server: (handle, watcher)."""
    all_share = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
    d = c.open(name, access=A.FILE_READ_DATA | A.FILE_READ_ATTRIBUTES,
               share=all_share, disposition=CreateDisposition.FILE_OPEN_IF, is_dir=True)
    return d, restart_watch(d, filt)


def restart_watch(d, filt):
    """A new CHANGE_NOTIFY on open directory `d`, pending on the server."""
    from smbprotocol.change_notify import FileSystemWatcher
    w = FileSystemWatcher(d)
    w.start(filt)
    return started(w)


def started(w):
    """Waits until the server answered the watcher's CHANGE_NOTIFY with its interim
    STATUS_PENDING (or completed it): the watch exists on the server from then on."""
    deadline = time.monotonic() + TIMEOUT
    while w._request.async_id is None and not w.response_event.is_set():
        if time.monotonic() > deadline:
            raise AssertionError("CHANGE_NOTIFY never went pending")
        time.sleep(0.005)
    return w


def collect_changes(d, flags, filt, first, n):
    """The changes of watcher `first` (then of new CHANGE_NOTIFYs on handle `d`) until `n`."""
    from smbprotocol.change_notify import FileSystemWatcher
    got = []
    w = first
    while True:
        if not w.response_event.wait(TIMEOUT):
            raise AssertionError(f"no change notify response; so far {got}")
        got.extend((a["action"].get_value(), a["file_name"].get_value()) for a in w.wait())
        if len(got) >= n:
            return got
        w = FileSystemWatcher(d)
        w.start(filt, flags=flags)


def notifylm(c1, c2):
    """Issue 12, change notify through the lock manager (MS-SMB2 3.3.5.19, MS-FSCC 2.7.1): both
    nodes run without inotify (change_notify = "lockmgr"): only changes made through smbd, all
    carried between nodes by lockmgrd. Node 1's client watches a directory for name, size and
    last-write changes; node 2's client creates a file there, writes it, renames it, deletes
    it, and moves in a file it created in an unwatched directory. Node 1's client must get
    exactly ADDED, MODIFIED, OLD_NAME + NEW_NAME, REMOVED, ADDED, in order, each once."""
    all_share = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
    filt = FILE_NOTIFY_CHANGE_FILE_NAME | 0x8 | 0x10  # FILE_NAME | SIZE | LAST_WRITE
    c2.open("lm-other", access=A.GENERIC_READ, share=all_share,
            disposition=CreateDisposition.FILE_CREATE, is_dir=True).close()
    d, w = watch_dir(c1, "lm-dir", filt)
    f = c2.open("lm-dir\\a.txt", access=A.GENERIC_READ | A.GENERIC_WRITE | A.DELETE,
                share=all_share, disposition=CreateDisposition.FILE_CREATE)
    f.write(b"hello", 0)
    c2.rename(f, "lm-dir\\b.txt")
    c2.set_delete_pending(f)
    f.close()
    # In the unwatched directory: reported to nobody (the harness checks lockmgrd's counter).
    g = c2.open("lm-other\\c.txt", access=A.GENERIC_READ | A.GENERIC_WRITE | A.DELETE,
                share=all_share, disposition=CreateDisposition.FILE_CREATE)
    g.write(b"unwatched", 0)
    c2.rename(g, "lm-dir\\c.txt")
    g.close()
    got = collect_changes(d, 0, filt, w, 6)
    want = [(ADDED, "a.txt"), (MODIFIED, "a.txt"), (OLD_NAME, "a.txt"), (NEW_NAME, "b.txt"),
            (REMOVED, "b.txt"), (ADDED, "c.txt")]
    assert got == want, f"changes {got}, want {want}"
    d.close()


def notifycfs(c1, c2):
    """Issue 12, change notify on a cluster filesystem (MS-SMB2 3.3.5.19, MS-FSCC 2.7.1): each
    node serves the share through its own FUSE mount ($NODE_MOUNTS: node 1's, node 2's), so a
    node's inotify sees only what goes through its own mount, as on NFS or CephFS. Node 1's
    client watches a directory. What another process does there through node 2's mount
    (create, rename, delete) must reach it through node 2's inotify and lockmgrd; a create
    through node 1's mount through node 1's own inotify; node 2's client's create through
    lockmgrd, once (node 2's inotify watches the directory for node 1 and sees that create
    too: it must not be passed on twice). Each change in order, each exactly once."""
    import os
    m1, m2 = os.environ["NODE_MOUNTS"].split(os.pathsep)
    all_share = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
    filt = FILE_NOTIFY_CHANGE_FILE_NAME
    d, w = watch_dir(c1, "cfs-dir", filt)
    # The harness goes on once node 2 watches the directory for node 1 (lockmgrd told it).
    print("WATCHING", flush=True)
    sys.stdin.readline()

    def touch(mount, name):
        os.close(os.open(os.path.join(mount, "cfs-dir", name), os.O_CREAT | os.O_WRONLY, 0o644))

    got = []
    steps = [
        (lambda: touch(m2, "out2.txt"), [(ADDED, "out2.txt")]),
        (lambda: touch(m1, "out1.txt"), [(ADDED, "out1.txt")]),
        (lambda: c2.open("cfs-dir\\smb2.txt", access=A.GENERIC_READ | A.GENERIC_WRITE,
                         share=all_share, disposition=CreateDisposition.FILE_CREATE).close(),
         [(ADDED, "smb2.txt")]),
        (lambda: os.rename(os.path.join(m2, "cfs-dir", "out2.txt"),
                           os.path.join(m2, "cfs-dir", "moved2.txt")),
         [(OLD_NAME, "out2.txt"), (NEW_NAME, "moved2.txt")]),
        (lambda: os.unlink(os.path.join(m2, "cfs-dir", "moved2.txt")), [(REMOVED, "moved2.txt")]),
        # Last, through node 1's own mount: a change passed on twice before it shows here.
        (lambda: touch(m1, "last.txt"), [(ADDED, "last.txt")]),
    ]
    want = []
    for act, expect in steps:
        act()
        want.extend(expect)
        got.extend(collect_changes(d, 0, filt, w, len(expect)))
        assert got == want, f"changes {got}, want {want}"
        w = restart_watch(d, filt)
    d.close()


def notifylmrmdir(c1, c2):
    """Issue 12: node 1's client watches a directory (both nodes without inotify); node 2's
    client deletes it (delete-on-close, then its close). Node 1's handle keeps it, delete-
    pending, so node 1's waiting CHANGE_NOTIFY must end with STATUS_DELETE_PENDING as when
    both clients are on one node (MS-FSA 2.1.5.4; smbtorture smb2.notify.rmdir1)."""
    all_share = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
    d, w = watch_dir(c1, "lm-rmdir", FILE_NOTIFY_CHANGE_FILE_NAME)
    r = c2.open("lm-rmdir", access=A.DELETE | A.FILE_READ_ATTRIBUTES, share=all_share,
                disposition=CreateDisposition.FILE_OPEN, is_dir=True)
    c2.set_delete_pending(r)
    r.close()
    if not w.response_event.wait(TIMEOUT):
        raise AssertionError("node 1's CHANGE_NOTIFY did not end when node 2 deleted the directory")
    try:
        got = w.wait()
    except SMBResponseException as e:
        assert e.status == 0xC0000056, f"status {e.status:#x}, want STATUS_DELETE_PENDING"
    else:
        raise AssertionError(f"CHANGE_NOTIFY answered {got}, want STATUS_DELETE_PENDING")
    d.close()


def notifylmtree(c1, c2):
    """Issue 12, SMB2_WATCH_TREE through the lock manager (MS-SMB2 2.2.35): without inotify,
    node 1's handle watching a tree gets node 2's changes two levels below it under their path
    from it; a second handle of the same directory without WATCH_TREE only those in it."""
    all_share = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
    from smbprotocol.change_notify import FileSystemWatcher
    names = FILE_NOTIFY_CHANGE_FILE_NAME | 0x2
    tree = c1.open("lm-tree", access=A.FILE_READ_DATA | A.FILE_READ_ATTRIBUTES,
                   share=all_share, disposition=CreateDisposition.FILE_OPEN_IF, is_dir=True)
    flat = c1.open("lm-tree", access=A.FILE_READ_DATA | A.FILE_READ_ATTRIBUTES,
                   share=all_share, disposition=CreateDisposition.FILE_OPEN, is_dir=True)
    wt = FileSystemWatcher(tree)
    wt.start(names, flags=1)
    started(wt)
    wf = FileSystemWatcher(flat)
    wf.start(names, flags=0)
    started(wf)
    for path, is_dir in (("lm-tree\\sub", True), ("lm-tree\\sub\\x.txt", False),
                         ("lm-tree\\sub\\deeper", True), ("lm-tree\\sub\\deeper\\y.txt", False),
                         ("lm-tree\\z.txt", False)):
        c2.open(path, access=A.GENERIC_READ | A.GENERIC_WRITE if not is_dir else A.GENERIC_READ,
                share=all_share, disposition=CreateDisposition.FILE_CREATE, is_dir=is_dir).close()
    got = collect_changes(tree, 1, names, wt, 5)
    want = [(ADDED, "sub"), (ADDED, "sub\\x.txt"), (ADDED, "sub\\deeper"),
            (ADDED, "sub\\deeper\\y.txt"), (ADDED, "z.txt")]
    assert got == want, f"WATCH_TREE: changes {got}, want {want}"
    got = collect_changes(flat, 0, names, wf, 2)
    want = [(ADDED, "sub"), (ADDED, "z.txt")]
    assert got == want, f"without WATCH_TREE: changes {got}, want {want}"
    tree.close()
    flat.close()


def notifylmfailover(c1, c2):
    """Issue 12, change notify through a replicated lock manager: node 1's watch (registered
    with the primary, both nodes without inotify) is the standby's too, so after the primary's
    death the change node 2's client makes still reaches node 1's watcher."""
    all_share = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
    d, w = watch_dir(c1, "lm-fo", FILE_NOTIFY_CHANGE_FILE_NAME)
    c2.open("lm-fo\\before.txt", share=all_share, disposition=CreateDisposition.FILE_CREATE).close()
    got = collect_changes(d, 0, FILE_NOTIFY_CHANGE_FILE_NAME, w, 1)
    assert got == [(ADDED, "before.txt")], f"before the failover: {got}"
    w = restart_watch(d, FILE_NOTIFY_CHANGE_FILE_NAME)
    print("FAILOVER-LOCKMGRD", flush=True)
    sys.stdin.readline()
    c2.open("lm-fo\\after.txt", share=all_share, disposition=CreateDisposition.FILE_CREATE).close()
    got = collect_changes(d, 0, FILE_NOTIFY_CHANGE_FILE_NAME, w, 1)
    assert got == [(ADDED, "after.txt")], f"after the failover: {got}"
    d.close()


def writetime(c1, c2):
    """Issue 12 (MS-FSA 2.1.5.14.2, smbtorture smb2.timestamps.delayed-*): LastWriteTime lives
    in the shared file system, so node 2 reports what node 1's writes and settings make it.
    A FLUSH after a write brings the write's update forward, seen alike on both nodes; a
    LastWriteTime set through node 1's handle sticks over later writes through it, on both
    nodes, before and after its close."""
    all_share = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
    name = "writetime-%d.txt" % int(time.time() * 1000)
    f1 = c1.open(name, share=all_share, disposition=CreateDisposition.FILE_CREATE)
    f2 = c2.open(name, access=A.FILE_READ_ATTRIBUTES, share=all_share,
                 disposition=CreateDisposition.FILE_OPEN)
    f1.write(b"x", 0)
    f1.flush()
    w1 = c1.basic_info(f1)[2]
    w2 = c2.basic_info(f2)[2]
    assert w1 == w2, f"after the flush node 1 reports {w1}, node 2 {w2}"
    set_time = 132_000_000_000_000_000  # 2019-04-15
    c1.set_write_time(f1, set_time)
    for i in range(5):
        f1.write(b"y" * 100, i * 100)
    f1.flush()
    got = (c1.basic_info(f1)[2], c2.basic_info(f2)[2])
    assert got == (set_time, set_time), f"writes moved the write time set: {got}"
    f1.close()
    got = c2.basic_info(f2)[2]
    assert got == set_time, f"the close moved the write time set: {got}"
    f2.close()


FILETIME_UNIX_EPOCH = 116_444_736_000_000_000


def filetime_of_ns(ns):
    """A kernel time in nanoseconds since 1970 as a FILETIME (100 ns since 1601)."""
    return ns // 100 + FILETIME_UNIX_EPOCH


def write_times(c1, c2, name):
    """LastWriteTime of `name` through a fresh FILE_READ_ATTRIBUTES handle on each node."""
    all_share = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
    out = []
    for c in (c1, c2):
        f = c.open(name, access=A.FILE_READ_ATTRIBUTES, share=all_share,
                   disposition=CreateDisposition.FILE_OPEN)
        out.append(c.basic_info(f)[2])
        f.close()
    return tuple(out)


def outsidetime(c1, c2):
    """Issue 12: smbd keeps Windows' LastWriteTime beside the kernel mtime it was recorded with
    (smbd/server/src/dosattr.rs); a process outside smbd that changes the mtime (`touch -d`, a
    plain write) makes SMB report the kernel's time again on both nodes, and SMB writes after
    that are delayed from that time as before (MS-FSA 2.1.4.17)."""
    share_dir = os.environ["NOTIFY_SHARE_DIR"]
    all_share = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
    name = "outsidetime-%d.txt" % int(time.time() * 1000)
    path = os.path.join(share_dir, name)
    f1 = c1.open(name, share=all_share, disposition=CreateDisposition.FILE_CREATE)
    f1.write(b"smb", 0)
    set_time = 132_000_000_000_000_000  # 2019-04-15, recorded as Windows' time
    c1.set_write_time(f1, set_time)
    f1.close()
    got = write_times(c1, c2, name)
    assert got == (set_time, set_time), f"the time set through SMB: {got}"
    # touch -d
    outside_ns = 1_600_000_000_123_456_700
    os.utime(path, ns=(outside_ns, outside_ns))
    want = filetime_of_ns(outside_ns)
    got = write_times(c1, c2, name)
    assert got == (want, want), f"after touch -d SMB reports {got}, the file's mtime is {want}"
    # a plain write by a local process
    with open(path, "ab") as fh:
        fh.write(b" local")
    want = filetime_of_ns(os.stat(path).st_mtime_ns)
    got = write_times(c1, c2, name)
    assert got == (want, want), f"after a local write SMB reports {got}, the mtime is {want}"
    # SMB writes are delayed from the kernel's time again: not moved at once, moved at close.
    f1 = c1.open(name, share=all_share, disposition=CreateDisposition.FILE_OPEN)
    f1.write(b"again", 0)
    got = write_times(c1, c2, name)
    assert got == (want, want), f"an SMB write moved the time at once: {got}, was {want}"
    f1.close()
    t1, t2 = write_times(c1, c2, name)
    assert t1 == t2 and t1 > want, f"the close after a write did not move it: {(t1, t2)}, was {want}"


def twowriters(c1, c2):
    """Issue 12: opens on two nodes write one file; node 2's close (its update: the close's
    time) does not end node 1's hold on the time: node 1's later write, which moves the
    kernel mtime, still does not move the time on either node until node 1's close. FLUSHes
    use up each open's 2 s update first, so no timer moves the time during the checks."""
    all_share = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
    name = "twowriters-%d.txt" % int(time.time() * 1000)
    f1 = c1.open(name, share=all_share, disposition=CreateDisposition.FILE_CREATE)
    f2 = c2.open(name, share=all_share, disposition=CreateDisposition.FILE_OPEN)
    f1.write(b"a", 0)
    f1.flush()
    f2.write(b"b", 1)
    f2.flush()
    f2.write(b"c", 2)
    f2.close()
    t = write_times(c1, c2, name)
    assert t[0] == t[1], f"the nodes disagree after node 2's close: {t}"
    time.sleep(0.05)  # past the kernel clock's tick, so node 1's write moves the mtime
    f1.write(b"d", 3)
    got = write_times(c1, c2, name)
    assert got == t, f"node 2's close ended node 1's hold: {got}, was {t}"
    f1.close()
    after = write_times(c1, c2, name)
    assert after[0] == after[1] and after[0] > t[0], f"node 1's close: {after}, was {t}"


def streamtime(c1, c2):
    """Issue 12 (MS-FSA 2.1.5.3, 2.1.4.17: times belong to the file, not to a stream): a write
    to a named stream moves the file's LastWriteTime by the same delayed rule as a write to
    its data: not at once, at the stream open's FLUSH, and again at its close after more
    writes; both nodes report it."""
    all_share = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
    name = "streamtime-%d.txt" % int(time.time() * 1000)
    c1.open(name, share=all_share, disposition=CreateDisposition.FILE_CREATE).close()
    t0 = write_times(c1, c2, name)
    s = c1.open(name + ":s1", share=all_share, disposition=CreateDisposition.FILE_OPEN_IF)
    s.write(b"stream data", 0)
    got = write_times(c1, c2, name)
    assert got == t0, f"a stream write moved the file's time at once: {got}, was {t0}"
    s.flush()
    t1 = write_times(c1, c2, name)
    assert t1[0] == t1[1] and t1[0] > t0[0], f"the stream's FLUSH did not move it: {t1}, was {t0}"
    s.write(b"more", 0)
    assert write_times(c1, c2, name) == t1, "a later stream write moved it before the close"
    s.close()
    t2 = write_times(c1, c2, name)
    assert t2[0] == t2[1] and t2[0] > t1[0], f"the stream's close did not move it: {t2}, was {t1}"


def durabletime(c1, c2):
    """Issue 12: a durable handle (DH2Q with an RH lease, as in leaseh) writes and its client's
    transport drops before the delayed LastWriteTime update (MS-FSA 2.1.4.17) is due: the
    update is applied when the handle disconnects (MS-SMB2 3.3.7.1), not lost with the
    connection's timer. Node 2 sees it."""
    all_share = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
    name = "durabletime-%d.txt" % int(time.time() * 1000)
    f2 = c2.open(name, access=A.GENERIC_READ, share=all_share,
                 disposition=CreateDisposition.FILE_CREATE)
    f1 = c1.open(name, share=all_share, lease_key=uuid.uuid4().bytes, lease_state=RWH,
                 durable_v2=True, disposition=CreateDisposition.FILE_OPEN)
    assert durable_v2_granted(f1), "no durable handle"
    t0 = c2.basic_info(f2)[2]
    f1.write(b"durable", 0)
    got = c2.basic_info(f2)[2]
    assert got == t0, f"the write moved the time at once: {got}, was {t0}"
    # The transport only: no CLOSE, no LOGOFF (the durable open is parked, not closed).
    c1.conn.disconnect(False)
    deadline = time.monotonic() + TIMEOUT
    got = t0
    while got == t0 and time.monotonic() < deadline:
        time.sleep(0.1)
        got = c2.basic_info(f2)[2]
    assert got > t0, f"the disconnect did not apply the pending update: {got}, was {t0}"
    f2.close()


OBJECT_PATH_SYNTAX_BAD = 0xC000003B


def dotdot(c1, c2):
    """Issue 12 (smbtorture smb2.notify.tree, smb2.mkdir): a `..` component of a CREATE or
    rename name takes back the component before it, by name alone, as Windows and Samba do;
    a name whose `..` would climb above the share root is refused with
    OBJECT_PATH_SYNTAX_BAD. The harness puts `outside.txt` next to the share directory and
    checks afterwards that no `escaped*` name appeared there."""
    all_share = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
    c1.open("dotdot", access=A.FILE_READ_DATA | A.FILE_READ_ATTRIBUTES, share=all_share,
            disposition=CreateDisposition.FILE_OPEN_IF, is_dir=True).close()
    c1.open("dotdot\\x.txt", share=all_share, disposition=CreateDisposition.FILE_OPEN_IF).close()
    # BASEDIR\zqy\.. is BASEDIR, whether or not zqy exists.
    d = c2.open("dotdot\\zqy\\..", access=A.FILE_READ_DATA | A.FILE_READ_ATTRIBUTES,
                share=all_share, disposition=CreateDisposition.FILE_OPEN_IF, is_dir=True)
    d.close()
    c2.open("dotdot\\missing\\..\\x.txt", access=A.GENERIC_READ, share=all_share,
            disposition=CreateDisposition.FILE_OPEN).close()
    # A file made through `..` lands where the name says: the share root.
    c2.open("dotdot\\..\\dotdot-root.txt", share=all_share,
            disposition=CreateDisposition.FILE_CREATE).close()
    c1.open("dotdot-root.txt", access=A.GENERIC_READ | A.DELETE, share=all_share,
            disposition=CreateDisposition.FILE_OPEN,
            options=CreateOptions.FILE_DELETE_ON_CLOSE).close()
    # Above the share root: refused, for an existing name outside and for a new one.
    for name in ("..", "..\\outside.txt", "dotdot\\..\\..\\outside.txt",
                 "dotdot\\x.txt\\..\\..\\..\\outside.txt", "..\\escaped.txt",
                 "dotdot\\..\\..\\escaped.txt"):
        for disp in (CreateDisposition.FILE_OPEN, CreateDisposition.FILE_OPEN_IF):
            expect_status(OBJECT_PATH_SYNTAX_BAD, c2.open, name, access=A.GENERIC_READ,
                          share=all_share, disposition=disp)
    expect_status(OBJECT_PATH_SYNTAX_BAD, c2.open, "dotdot\\..\\..", access=A.GENERIC_READ,
                  share=all_share, disposition=CreateDisposition.FILE_OPEN_IF, is_dir=True)
    # A rename target is the same kind of name.
    f = c1.open("dotdot\\x.txt", access=A.GENERIC_READ | A.DELETE, share=all_share,
                disposition=CreateDisposition.FILE_OPEN)
    for target in ("..\\escaped2.txt", "dotdot\\..\\..\\escaped3.txt"):
        expect_status(OBJECT_PATH_SYNTAX_BAD, c1.rename, f, target)
    c1.rename(f, "dotdot\\zqy\\..\\y.txt")
    f.close()
    c2.open("dotdot\\y.txt", access=A.GENERIC_READ, share=all_share,
            disposition=CreateDisposition.FILE_OPEN).close()


SCENARIOS = {f.__name__: f for f in (sharemode, brl, iogrant, blocking, oplock, deadclient,
                                     lease, doc, kill,
                                     lmrestart, lmfailover, rename, leaseh, streams, links,
                                     notify, notifytree, notifylm, notifylmtree,
                                     notifylmfailover, notifylmrmdir, notifycfs, dotdot, writetime,
                                     outsidetime, streamtime, durabletime, twowriters)}


def main():
    hosts, p1, p2, user, password, scenario = sys.argv[1:7]
    host1, _, host2 = hosts.partition(",")
    c1 = Client(host1, int(p1), user, password)
    c2 = Client(host2 or host1, int(p2), user, password)
    try:
        SCENARIOS[scenario](c1, c2)
    finally:
        c1.close()
        if scenario != "kill":
            c2.close()
    print(f"PASS {scenario}", flush=True)


if __name__ == "__main__":
    main()
