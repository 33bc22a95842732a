#!/usr/bin/env python3
"""The two clients of the node-fencing test (tests/fencing.rs), one process each.

usage: fence_client.py hold|take HOST PORT USER PASSWORD

hold: on the node that will be partitioned. Opens fence.txt exclusively (no sharing) with an
      RWH lease and an exclusive byte-range lock, prints "HELD", then uses the handle every
      20 ms until the connection is dropped ("DROPPED <CLOCK_MONOTONIC ns>"), then reconnects
      until the node serves it again: a new connection, a shared open of fence.txt, a write and
      a lock ("WORKS"). "HELD" carries the CLOCK_MONOTONIC ns at which the lock was held.
take: on the other node. Prints "READY", waits for a line on stdin (the partition is in
      place), then opens fence.txt and locks the same range, retrying while the first client's
      open and lock are in the way, and prints "GRANTED <CLOCK_MONOTONIC ns>" (time.monotonic_ns
      reads CLOCK_MONOTONIC on Linux: comparable with smbd's and lockmgrd's stamps), then
      "RELEASING <ns>" before it unlocks.
"""
import sys
import time
import uuid

sys.path.insert(0, __import__("os").path.dirname(__file__))
from cluster_client import RWH, Client, lock_el  # noqa: E402
from smbprotocol.open import ShareAccess  # noqa: E402

DEADLINE_S = 60.0


def hold(host, port, user, password):
    c = Client(host, port, user, password)
    f = c.open("fence.txt", share=0, lease_key=uuid.uuid4().bytes, lease_state=RWH)
    f.lock([lock_el(0, 10)])
    print(f"HELD {time.monotonic_ns()}", flush=True)
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            f.write(b"held", 0)
        except Exception as e:  # noqa: BLE001 - any failure: the connection is gone
            print(f"DROPPED {time.monotonic_ns()} {type(e).__name__}", flush=True)
            break
        assert time.monotonic() < deadline, "the node never dropped the connection"
        time.sleep(0.02)
    c.close()
    while True:
        try:
            c = Client(host, port, user, password)
            g = c.open("fence.txt", share=ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE)
            g.write(b"back", 0)
            g.lock([lock_el(100, 10)])
            g.close()
            c.close()
            break
        except Exception as e:  # noqa: BLE001 - retried until the node serves again
            assert time.monotonic() < deadline, f"never served again: {e!r}"
            time.sleep(0.2)
    print("WORKS", flush=True)


def take(host, port, user, password):
    c = Client(host, port, user, password)
    print("READY", flush=True)
    sys.stdin.readline()
    deadline = time.monotonic() + DEADLINE_S
    f = None
    while True:
        try:
            if f is None:
                f = c.open("fence.txt",
                           share=ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE)
            f.lock([lock_el(0, 10)])
            break
        except Exception as e:  # noqa: BLE001 - sharing violation / lock conflict: retry
            assert time.monotonic() < deadline, f"never granted: {e!r}"
            time.sleep(0.01)
    print(f"GRANTED {time.monotonic_ns()}", flush=True)
    print(f"RELEASING {time.monotonic_ns()}", flush=True)
    f.lock([lock_el(0, 10, unlock=True)])
    f.close()
    c.close()


def main():
    role, host, port, user, password = sys.argv[1:6]
    {"hold": hold, "take": take}[role](host, int(port), user, password)


if __name__ == "__main__":
    main()
