#!/usr/bin/env python3
"""Durable handle reclaimed through another node after its node died.

usage: durable_client.py HOST[,HOST2] PORT1 PORT2 USER PASSWORD durable|persistent|moved

A client on node 2 opens a file with a durable handle (DH2Q, MS-SMB2 2.2.13.2.11) under a
read-handle lease, writes to it and takes a byte-range lock. The script prints "KILL-NODE2"
and reads one line from stdin: meanwhile the harness SIGKILLs node 2's smbd. Then:
- another client on node 1 can open the file (the disconnected open's share mode and RH lease
  allow it) but its read of the locked range conflicts: the lock is still in force;
- the first client reconnects to node 1 with the same ClientGuid and sends a CREATE with
  DH2C (2.2.13.2.12) and its lease key: it gets its handle back, reads what it wrote, and the
  lock still conflicts for the other client until it unlocks.
smbprotocol has no durable reconnect, so the create contexts are built by hand.

The "persistent" scenario runs on a continuously available share (MS-SMB2 3.3.5.9.10): the open
asks for a persistent handle with no oplock and no lease (a durable handle would not be granted,
and would not be kept, without handle caching). The harness kills node 2 AND the lock manager's
primary at the marker. While the open is disconnected every other open of the file fails with
STATUS_FILE_NOT_AVAILABLE (MS-SMB2 3.3.5.9); the client reclaims it through node 1 with a
persistent DH2C, reads what it wrote, and its byte-range lock is still in force.
The "moved" scenario uses one address, a public address (HOST, PORT1): the client opens a durable
handle through it, the harness kills (or drains) the node holding it at "KILL-NODE1", and the client
reconnects to the same address (now another node's) and reclaims handle, lease and lock there.
Prints "PASS <scenario>" and exits 0 when the cluster behaved.
"""
import os
import struct
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster_client import (FILE_LOCK_CONFLICT, NOT_FOUND, OPLOCK_LEASE, RH,  # noqa: E402
                            Client, expect_status, lock_el)
from smbprotocol.exceptions import SMBResponseException  # noqa: E402
from smbprotocol.create_contexts import SMB2CreateContextRequest  # noqa: E402
from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes,  # noqa: E402
                              FilePipePrinterAccessMask as A, ImpersonationLevel, Open,
                              ShareAccess)

NAME = "durable.txt"
DATA = b"written through node 2"
SHARE_RW = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE


def ctx(name, data):
    c = SMB2CreateContextRequest()
    c["buffer_name"] = name
    c["buffer_data"] = data
    return c


def lease_ctx(key, state):
    return ctx(b"RqLs", key + struct.pack("<IIQ", state, 0, 0))


def client(host, port, user, password, guid, timeout=60):
    c = Client.__new__(Client)
    from smbprotocol.connection import Connection
    from smbprotocol.session import Session
    from smbprotocol.tree import TreeConnect
    from cluster_client import BREAK_MID, BreakSink
    c.conn = Connection(guid, host, port, require_signing=False)
    c.conn.connect(timeout=timeout)
    c.sink = BreakSink()
    c.conn.outstanding_requests[BREAK_MID] = c.sink
    c.sess = Session(c.conn, user, password, require_encryption=False)
    c.sess.connect()
    c.tree = TreeConnect(c.sess, rf"\\{host}\data")
    c.tree.connect()
    return c


def create(c, contexts, access=A.GENERIC_READ | A.GENERIC_WRITE,
           disposition=CreateDisposition.FILE_OVERWRITE_IF):
    f = Open(c.tree, NAME)
    resp = f.create(ImpersonationLevel.Impersonation, access, FileAttributes.FILE_ATTRIBUTE_NORMAL,
                    SHARE_RW, disposition, CreateOptions.FILE_NON_DIRECTORY_FILE,
                    create_contexts=contexts, oplock_level=OPLOCK_LEASE)
    return f, resp


def open_durable_and_lock(c, key, create_guid):
    """Opens NAME with a durable handle (DH2Q: Timeout 60 s, Flags 0, not persistent) under a
    read-handle lease, writes DATA and locks bytes 0-9."""
    dh2q = ctx(b"DH2Q", struct.pack("<IIQ", 60_000, 0, 0) + create_guid)
    f, _ = create(c, [lease_ctx(key, RH), dh2q])
    assert f.oplock_level == OPLOCK_LEASE, f"no lease: {f.oplock_level}"
    f.write(DATA, 0)
    f.lock([lock_el(0, 10)])
    return f


def reclaim(c, key, file_id, create_guid, attempts):
    """Reclaims the durable handle `file_id` with DH2C and the same lease key; checks file id,
    lease and data. Like a real client it retries while the cluster has not yet noticed the
    old node's death (the open is then still owned by that node, not reclaimable)."""
    dh2c = ctx(b"DH2C", file_id + create_guid + struct.pack("<I", 0))
    for attempt in range(attempts):
        try:
            f, _ = create(c, [lease_ctx(key, RH), dh2c], disposition=CreateDisposition.FILE_OPEN)
            break
        except SMBResponseException as e:
            if e.status != NOT_FOUND or attempt == attempts - 1:
                raise
            time.sleep(0.1)
    assert f.file_id == file_id, "reclaimed handle has another file id"
    assert f.oplock_level == OPLOCK_LEASE, f"lease lost: {f.oplock_level}"
    got = f.read(0, len(DATA))
    assert got == DATA, f"read {got!r} through the reclaimed handle"
    return f


def durable(c1, host1, port1, host2, port2, user, password):
    guid = uuid.uuid4()
    key = uuid.uuid4().bytes
    create_guid = uuid.uuid4().bytes
    c2 = client(host2, port2, user, password, guid)
    file_id = open_durable_and_lock(c2, key, create_guid).file_id
    print("KILL-NODE2", flush=True)
    sys.stdin.readline()

    # Node 2 is gone; its client's open is disconnected but in force.
    other = c1.open(NAME, access=A.GENERIC_READ, share=SHARE_RW | ShareAccess.FILE_SHARE_DELETE,
                    disposition=CreateDisposition.FILE_OPEN)
    expect_status(FILE_LOCK_CONFLICT, other.read, 0, 1)

    # The client comes back through node 1 with the same ClientGuid and reclaims its handle.
    c3 = client(host1, port1, user, password, guid)
    f3 = reclaim(c3, key, file_id, create_guid, attempts=50)
    # The lock moved with the handle: still held against the other client.
    expect_status(FILE_LOCK_CONFLICT, other.read, 0, 1)
    f3.lock([lock_el(0, 10, unlock=True)])
    assert other.read(0, len(DATA)) == DATA
    f3.close()
    other.close()
    c3.close()


FILE_NOT_AVAILABLE = 0xC0000467
DHANDLE_FLAG_PERSISTENT = 0x2
PERSISTENT_NAME = "persistent.txt"


def persistent(c1, host1, port1, host2, port2, user, password):
    global NAME
    NAME = PERSISTENT_NAME
    guid = uuid.uuid4()
    create_guid = uuid.uuid4().bytes
    c2 = client(host2, port2, user, password, guid)
    caps = c2.tree.share_capabilities if hasattr(c2.tree, "share_capabilities") else None
    dh2q = ctx(b"DH2Q", struct.pack("<IIQ", 60_000, DHANDLE_FLAG_PERSISTENT, 0) + create_guid)
    f2 = Open(c2.tree, NAME)
    resp = f2.create(ImpersonationLevel.Impersonation, A.GENERIC_READ | A.GENERIC_WRITE,
                     FileAttributes.FILE_ATTRIBUTE_NORMAL, SHARE_RW,
                     CreateDisposition.FILE_OVERWRITE_IF, CreateOptions.FILE_NON_DIRECTORY_FILE,
                     create_contexts=[dh2q], oplock_level=0)
    granted = [r for r in (resp or []) if hasattr(r, "fields") and "flags" in r.fields
               and "timeout" in r.fields]
    assert granted, f"no durable v2 response context: {resp!r} (share caps {caps})"
    assert granted[0]["flags"].get_value() & DHANDLE_FLAG_PERSISTENT, "handle not persistent"
    f2.write(DATA, 0)
    f2.lock([lock_el(0, 10)])
    file_id = f2.file_id
    print("KILL-NODE2", flush=True)
    sys.stdin.readline()

    # Once the cluster has noticed node 2's death the open is disconnected and nobody else
    # may open the file (until then node 2 still owns it and share modes decide).
    unavailable = False
    for _ in range(100):
        try:
            other = c1.open(NAME, access=A.GENERIC_READ, share=SHARE_RW,
                            disposition=CreateDisposition.FILE_OPEN)
            other.close()
            time.sleep(0.1)
        except SMBResponseException as e:
            assert e.status == FILE_NOT_AVAILABLE, f"open got 0x{e.status:08x}"
            unavailable = True
            break
    assert unavailable, "the file stayed available while its persistent open was disconnected"

    c3 = client(host1, port1, user, password, guid)
    dh2c = ctx(b"DH2C", file_id + create_guid + struct.pack("<I", DHANDLE_FLAG_PERSISTENT))
    f3 = Open(c3.tree, NAME)
    f3.create(ImpersonationLevel.Impersonation, A.GENERIC_READ | A.GENERIC_WRITE,
              FileAttributes.FILE_ATTRIBUTE_NORMAL, SHARE_RW, CreateDisposition.FILE_OPEN,
              CreateOptions.FILE_NON_DIRECTORY_FILE, create_contexts=[dh2c], oplock_level=0)
    assert f3.file_id == file_id, "reclaimed handle has another file id"
    got = f3.read(0, len(DATA))
    assert got == DATA, f"read {got!r} through the reclaimed handle"
    # Reclaimed: the file is available again, and the lock moved with the handle.
    other = c1.open(NAME, access=A.GENERIC_READ, share=SHARE_RW,
                    disposition=CreateDisposition.FILE_OPEN)
    expect_status(FILE_LOCK_CONFLICT, other.read, 0, 1)
    f3.lock([lock_el(0, 10, unlock=True)])
    assert other.read(0, len(DATA)) == DATA
    f3.close()
    other.close()
    c3.close()


def connect_until_served(host, port, user, password, guid, deadline_s=30):
    """Connects as a client whose server went away would: again and again while the address
    moves (refused, unreachable, reset), until a server answers."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return client(host, port, user, password, guid, timeout=2)
        except (OSError, ValueError, SMBResponseException) as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"not served again within {deadline_s} s: {e!r}")
            time.sleep(0.1)


MOVED_NAME = "moved.txt"


def moved(host, port, user, password):
    """The client reaches the cluster through a public address. The node holding it dies (or
    is drained); the address moves to another node, and the client, reconnecting to the same address, reclaims
    its durable handle (with its lease and byte-range lock) there."""
    global NAME
    NAME = MOVED_NAME
    guid = uuid.uuid4()
    key = uuid.uuid4().bytes
    create_guid = uuid.uuid4().bytes
    c2 = client(host, port, user, password, guid)
    first_server = c2.conn.server_guid
    file_id = open_durable_and_lock(c2, key, create_guid).file_id
    print("KILL-NODE1", flush=True)
    sys.stdin.readline()

    # Same address, same ClientGuid: whoever holds the address now serves the reconnect.
    c3 = connect_until_served(host, port, user, password, guid)
    assert c3.conn.server_guid != first_server, "served by the dead node's server GUID"
    f3 = reclaim(c3, key, file_id, create_guid, attempts=100)
    # The lock moved with the handle: another client of the same address still conflicts.
    other_client = client(host, port, user, password, uuid.uuid4())
    other = other_client.open(NAME, access=A.GENERIC_READ,
                              share=SHARE_RW | ShareAccess.FILE_SHARE_DELETE,
                              disposition=CreateDisposition.FILE_OPEN)
    expect_status(FILE_LOCK_CONFLICT, other.read, 0, 1)
    f3.lock([lock_el(0, 10, unlock=True)])
    assert other.read(0, len(DATA)) == DATA
    f3.close()
    other.close()
    other_client.close()
    c3.close()


def main():
    hosts, p1, p2, user, password, scenario = sys.argv[1:7]
    if scenario == "moved":
        # One address for everything (the public address); no client before the move.
        moved(hosts, int(p1), user, password)
        print(f"PASS {scenario}", flush=True)
        return
    scenarios = {"durable": durable, "persistent": persistent}
    assert scenario in scenarios, f"unknown scenario {scenario}"
    host1, _, host2 = hosts.partition(",")
    c1 = Client(host1, int(p1), user, password)
    try:
        scenarios[scenario](c1, host1, int(p1), host2 or host1, int(p2), user, password)
    finally:
        c1.close()
    print(f"PASS {scenario}", flush=True)


if __name__ == "__main__":
    main()
