#!/usr/bin/env python3
"""Drive smbd with the Python smbprotocol client (pip install smbprotocol).

usage: smbprotocol_client.py HOST PORT SHARE USER PASSWORD [DIALECT]
Exercises: mkdir, put (write), listdir, stat, rename, get (read, compared), remove, rmdir,
at the given dialect (0x0202, 0x0210, 0x0300, 0x0302, 0x0311; default: highest) and with
encryption at 3.x. Exits non-zero on the first mismatch.
"""
import os
import sys
import uuid

import smbclient
from smbprotocol.connection import Connection, Dialects
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect
from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes,
                              ImpersonationLevel, Open, ShareAccess, FilePipePrinterAccessMask)


def low_level(host, port, share, user, password, dialect, encrypt):
    conn = Connection(uuid.uuid4(), host, port, require_signing=False)
    conn.connect(dialect=dialect)
    try:
        sess = Session(conn, user, password, require_encryption=encrypt)
        sess.connect()
        tree = TreeConnect(sess, rf"\\{host}\{share}")
        tree.connect()
        name = f"ll-{dialect:x}-{int(encrypt)}.bin"
        data = os.urandom(200_000)
        f = Open(tree, name)
        f.create(ImpersonationLevel.Impersonation,
                 FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE
                 | FilePipePrinterAccessMask.DELETE,
                 FileAttributes.FILE_ATTRIBUTE_NORMAL,
                 ShareAccess.FILE_SHARE_READ,
                 CreateDisposition.FILE_OVERWRITE_IF,
                 CreateOptions.FILE_NON_DIRECTORY_FILE | CreateOptions.FILE_DELETE_ON_CLOSE)
        chunk = 65536
        for off in range(0, len(data), chunk):
            f.write(data[off:off + chunk], off)
        back = b"".join(f.read(off, min(chunk, len(data) - off)) for off in range(0, len(data), chunk))
        assert back == data, "low-level read back differs"
        f.close()
        tree.disconnect()
        sess.disconnect()
    finally:
        conn.disconnect()


def high_level(host, port, share, user, password):
    smbclient.register_session(host, username=user, password=password, port=port)
    root = rf"\\{host}\{share}"
    d = root + r"\pydir"
    smbclient.mkdir(d, port=port)
    data = os.urandom(1_500_000)
    with smbclient.open_file(d + r"\a.bin", mode="wb", port=port) as f:
        f.write(data)
    names = smbclient.listdir(d, port=port)
    assert names == ["a.bin"], names
    st = smbclient.stat(d + r"\a.bin", port=port)
    assert st.st_size == len(data), st
    smbclient.rename(d + r"\a.bin", d + r"\b.bin", port=port)
    with smbclient.open_file(d + r"\b.bin", mode="rb", port=port) as f:
        assert f.read() == data, "read back differs"
    smbclient.remove(d + r"\b.bin", port=port)
    smbclient.rmdir(d, port=port)
    assert "pydir" not in smbclient.listdir(root, port=port)
    smbclient.reset_connection_cache()


def main():
    host, port, share, user, password = sys.argv[1:6]
    port = int(port)
    high_level(host, port, share, user, password)
    for d in (Dialects.SMB_2_0_2, Dialects.SMB_2_1_0, Dialects.SMB_3_0_0, Dialects.SMB_3_0_2,
              Dialects.SMB_3_1_1):
        low_level(host, port, share, user, password, d, False)
        if d >= Dialects.SMB_3_0_0:
            low_level(host, port, share, user, password, d, True)
    print("smbprotocol: all operations passed")


if __name__ == "__main__":
    main()
