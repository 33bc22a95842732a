#!/usr/bin/env python3
"""Server-side cost of small WRITEs and of QUERY_DIRECTORY, from smbd's own request-duration
histogram (`smbd_request_duration_seconds`, GET /metrics), for bench/scripts/small-io-bench.sh.

usage: small_io_bench.py HOST PORT METRICS_PORT USER PASSWORD WRITES DIR_FILES LISTINGS

One open writes WRITES x 4 KiB (sequential offsets, one request in flight), then a directory
of DIR_FILES files made through SMB (so each has smbd's DOS xattr) is listed LISTINGS times
(FileIdBothDirectoryInformation, RESTART_SCANS: each listing reads the directory afresh).
Making those files (CREATE, one 1-byte WRITE, CLOSE each) is measured too: the per-open cost.
Prints one line of JSON: per phase the histogram's delta as count, mean (exact, sum/count)
and p50/p99 interpolated inside the buckets as Prometheus' histogram_quantile does (the
buckets are 10, 25, 50, 100 us ..., so p50/p99 are coarse); for QUERY_DIRECTORY also the
server time per listing.
"""
import json
import sys
import urllib.request
import uuid

from smbprotocol.connection import Connection
from smbprotocol.exceptions import SMBResponseException
from smbprotocol.file_info import FileInformationClass
from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes,
                              FilePipePrinterAccessMask as A, ImpersonationLevel, Open,
                              QueryDirectoryFlags, ShareAccess)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

NO_MORE_FILES = 0x80000006


def scrape(port):
    """{command: (cumulative [(le, count)], sum_seconds, count)} of the request histogram."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if not line.startswith("smbd_request_duration_seconds"):
            continue
        name_labels, value = line.rsplit(" ", 1)
        name, _, labels = name_labels.partition("{")
        lab = dict(kv.split("=", 1) for kv in labels.rstrip("}").split(","))
        cmd = lab["command"].strip('"')
        h = out.setdefault(cmd, ([], 0.0, 0))
        if name.endswith("_bucket"):
            le = lab["le"].strip('"')
            h[0].append((float("inf") if le == "+Inf" else float(le), int(value)))
        elif name.endswith("_sum"):
            out[cmd] = (h[0], float(value), h[2])
        elif name.endswith("_count"):
            out[cmd] = (h[0], h[1], int(value))
    return out


def delta(before, after, cmd):
    b, a = before.get(cmd, ([], 0.0, 0)), after[cmd]
    prev = dict(b[0])
    buckets = [(le, n - prev.get(le, 0)) for le, n in a[0]]
    return buckets, a[1] - b[1], a[2] - b[2]


def quantile(q, buckets, count):
    """histogram_quantile over cumulative buckets, linear inside the bucket (seconds)."""
    rank = q * count
    lo, prev_n = 0.0, 0
    for le, n in buckets:
        if n >= rank:
            if le == float("inf"):
                return lo
            return lo + (le - lo) * ((rank - prev_n) / max(n - prev_n, 1))
        lo, prev_n = le, n
    return lo


def summary(before, after, cmd):
    buckets, s, n = delta(before, after, cmd)
    us = 1e6
    return {"count": n, "mean_us": round(s / n * us, 2) if n else None,
            "p50_us": round(quantile(0.5, buckets, n) * us, 1),
            "p99_us": round(quantile(0.99, buckets, n) * us, 1), "sum_ms": round(s * 1e3, 3)}


def main():
    host, port, mport, user, password, writes, dir_files, listings = sys.argv[1:9]
    writes, dir_files, listings = int(writes), int(dir_files), int(listings)
    conn = Connection(uuid.uuid4(), host, int(port), require_signing=False)
    conn.connect()
    sess = Session(conn, user, password, require_encryption=False)
    sess.connect()
    tree = TreeConnect(sess, rf"\\{host}\data")
    tree.connect()
    share = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE
    f = Open(tree, "writes.bin")
    f.create(ImpersonationLevel.Impersonation, A.GENERIC_READ | A.GENERIC_WRITE,
             FileAttributes.FILE_ATTRIBUTE_NORMAL, share, CreateDisposition.FILE_OVERWRITE_IF,
             CreateOptions.FILE_NON_DIRECTORY_FILE)
    block = b"w" * 4096
    m0 = scrape(mport)
    for i in range(writes):
        f.write(block, i * 4096)
    m1 = scrape(mport)
    f.close()
    d = Open(tree, "dir")
    d.create(ImpersonationLevel.Impersonation, A.GENERIC_READ | A.GENERIC_WRITE,
             FileAttributes.FILE_ATTRIBUTE_DIRECTORY, share, CreateDisposition.FILE_OPEN_IF,
             CreateOptions.FILE_DIRECTORY_FILE)
    mf = scrape(mport)
    for i in range(dir_files):
        e = Open(tree, "dir\\f%05d.txt" % i)
        e.create(ImpersonationLevel.Impersonation, A.GENERIC_READ | A.GENERIC_WRITE,
                 FileAttributes.FILE_ATTRIBUTE_NORMAL, share, CreateDisposition.FILE_OPEN_IF,
                 CreateOptions.FILE_NON_DIRECTORY_FILE)
        e.write(b"x", 0)
        e.close()
    m2 = scrape(mport)
    for _ in range(listings):
        seen = 0
        flags = QueryDirectoryFlags.SMB2_RESTART_SCANS
        while True:
            try:
                seen += len(d.query_directory("*", FileInformationClass.FILE_ID_BOTH_DIRECTORY_INFORMATION,
                                              flags=flags, max_output=65536))
            except SMBResponseException as ex:
                if ex.status != NO_MORE_FILES:
                    raise
                break
            flags = 0
        assert seen == dir_files + 2, f"listed {seen} entries"
    m3 = scrape(mport)
    d.close()
    qd = summary(m2, m3, "QUERY_DIRECTORY")
    qd["per_listing_us"] = round(qd["sum_ms"] * 1e3 / listings, 1)
    small = {c: summary(mf, m2, c) for c in ("CREATE", "WRITE", "CLOSE")}
    print(json.dumps({"WRITE": summary(m0, m1, "WRITE"), "QUERY_DIRECTORY": qd,
                      "small_files": small}), flush=True)
    conn.disconnect(True)


if __name__ == "__main__":
    main()
