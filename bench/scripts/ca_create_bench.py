#!/usr/bin/env python3
"""CREATE+CLOSE (and CREATE+4 KiB WRITE+CLOSE) on a continuously available share against the
same on an ordinary share, in the same run, through one smbd node.

usage: ca_create_bench.py HOST PORT USER PASSWORD [ITERATIONS] [ROUNDS]

Both sides ask what a Windows client asks: an RWH lease and a durable handle v2 (DH2Q); on the
CA share with SMB2_DHANDLE_FLAG_PERSISTENT, so the handle is persistent (kept by lockmgrd, writes
written through with RWF_DSYNC). Rounds alternate between the shares so load changes on a shared
machine hit both alike. Prints percentiles in microseconds and the CA/non-CA ratio of the
medians, then one JSON line. The client is smbprotocol (Python): its own cost is part of every
figure, so the ratio understates the server-side difference.
"""
import json
import struct
import sys
import time
import uuid

from smbprotocol.connection import Connection
from smbprotocol.create_contexts import SMB2CreateContextRequest
from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes,
                              FilePipePrinterAccessMask as A, ImpersonationLevel, Open,
                              ShareAccess)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

RWH = 0x7
OPLOCK_LEASE = 0xFF
PERSISTENT = 0x2


def ctx(name, data):
    c = SMB2CreateContextRequest()
    c["buffer_name"] = name
    c["buffer_data"] = data
    return c


def one(tree, name, persistent, write):
    contexts = [
        ctx(b"RqLs", uuid.uuid4().bytes + struct.pack("<IIQ", RWH, 0, 0)),
        ctx(b"DH2Q", struct.pack("<IIQ", 0, PERSISTENT if persistent else 0, 0)
            + uuid.uuid4().bytes),
    ]
    f = Open(tree, name)
    t0 = time.perf_counter_ns()
    f.create(ImpersonationLevel.Impersonation, A.GENERIC_READ | A.GENERIC_WRITE,
             FileAttributes.FILE_ATTRIBUTE_NORMAL,
             ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE,
             CreateDisposition.FILE_OPEN_IF, CreateOptions.FILE_NON_DIRECTORY_FILE,
             create_contexts=contexts, oplock_level=OPLOCK_LEASE)
    if write:
        f.write(b"x" * 4096, 0)
    f.close()
    return (time.perf_counter_ns() - t0) / 1000.0


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p / 100.0 * len(v)))]


def main():
    host, port, user, password = sys.argv[1:5]
    iters = int(sys.argv[5]) if len(sys.argv) > 5 else 2000
    rounds = int(sys.argv[6]) if len(sys.argv) > 6 else 4
    conn = Connection(uuid.uuid4(), host, int(port), require_signing=True)
    conn.connect()
    sess = Session(conn, user, password, require_encryption=False)
    sess.connect()
    trees = {}
    for share in ("data", "ca"):
        trees[share] = TreeConnect(sess, rf"\\{host}\{share}")
        trees[share].connect()
    results = {}
    for workload, write in (("create-close", False), ("create-write4k-close", True)):
        for share in ("data", "ca"):
            one(trees[share], "bench.dat", share == "ca", write)  # warm-up
        samples = {"data": [], "ca": []}
        for r in range(rounds):
            order = ("data", "ca") if r % 2 == 0 else ("ca", "data")
            for share in order:
                for _ in range(iters // rounds):
                    samples[share].append(one(trees[share], "bench.dat", share == "ca", write))
        for share in ("data", "ca"):
            v = samples[share]
            results[f"{workload}/{share}"] = {
                "n": len(v), "p50_us": pct(v, 50), "p90_us": pct(v, 90),
                "p99_us": pct(v, 99), "max_us": max(v)}
        ratio = results[f"{workload}/ca"]["p50_us"] / results[f"{workload}/data"]["p50_us"]
        results[f"{workload}/ratio_p50"] = ratio
        print(f"{workload}: non-CA p50 {results[workload + '/data']['p50_us']:.0f} us "
              f"p99 {results[workload + '/data']['p99_us']:.0f} us | CA (persistent) p50 "
              f"{results[workload + '/ca']['p50_us']:.0f} us p99 "
              f"{results[workload + '/ca']['p99_us']:.0f} us | CA/non-CA p50 {ratio:.2f}x")
    print(json.dumps(results))
    conn.disconnect(True)


if __name__ == "__main__":
    main()
