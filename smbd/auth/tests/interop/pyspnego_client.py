"""Drives pyspnego (the auth library of Python smbprotocol) as a client against smb-auth.

Used only to (re)record the fixtures replayed by `ntlm::tests::pyspnego_*` (see
`record_pyspnego_fixtures`, an ignored test). Line protocol on stdin/stdout: the script prints a
hex token, reads the server's hex token, and finally prints the session key in hex.
"""
import sys

import spnego

protocol = sys.argv[1]  # "negotiate" (SPNEGO) or "ntlm" (raw NTLMSSP)
ctx = spnego.client("alice", "correct horse", hostname="smbd", service="cifs", protocol=protocol)
tok = ctx.step()
while True:
    print(tok.hex(), flush=True)
    line = sys.stdin.readline().strip()
    tok = ctx.step(bytes.fromhex(line) if line else None)
    if ctx.complete:
        if tok:
            print(tok.hex(), flush=True)
        break
print("KEY " + ctx.session_key.hex(), flush=True)
