"""Adapter that drives Samba's `ntlm_auth` (same gensec NTLMSSP/SPNEGO client code as smbclient)
with the line protocol of pyspnego_client.py: print hex token, read hex server token, and finally
`KEY <hex>` (raw NTLM: the session key from `GK`) or `KEY -` (SPNEGO: ntlm_auth does not expose
the key, but its `AF` answer means it verified our mechListMIC, so the keys agree).
"""
import base64
import subprocess
import sys

mode = sys.argv[1]  # "negotiate" or "ntlm"
helper = "gss-spnego-client" if mode == "negotiate" else "ntlmssp-client-1"
p = subprocess.Popen(
    ["ntlm_auth", f"--helper-protocol={helper}", "--username=alice",
     "--password=correct horse", "--domain=WORKGROUP"],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def ask(line):
    p.stdin.write(line + "\n")
    p.stdin.flush()
    return p.stdout.readline().strip()


reply = ask("YR")
while True:
    kind, _, b64 = reply.partition(" ")
    # ntlmssp-client-1 hands out its AUTHENTICATE with "AF"; gss-spnego-client uses "KK" and
    # answers "AF *" once it has verified the server's final token.
    is_token = kind in ("YR", "KK") or (kind == "AF" and mode == "ntlm")
    if is_token:
        print(base64.b64decode(b64).hex(), flush=True)
        server = sys.stdin.readline().strip()
        if mode == "ntlm" and kind != "YR":
            key = ask("GK").split(" ", 1)[1]
            print("KEY " + base64.b64decode(key).hex(), flush=True)
            break
        reply = ask("TT " + base64.b64encode(bytes.fromhex(server)).decode())
    elif kind == "AF":
        print("KEY -", flush=True)
        break
    else:
        sys.exit(f"ntlm_auth said: {reply}")
p.stdin.close()
p.wait()
