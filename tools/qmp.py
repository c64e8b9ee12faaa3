#!/usr/bin/env python3
"""One QMP command to a running QEMU, for instance hooks and tests.

  tools/qmp.py SOCKET COMMAND [ARGUMENTS-JSON] [--wait-migration]

Prints the command's return value as JSON; exits non-zero on a QMP error. With
--wait-migration, polls query-migrate until the migration completes (bounded).
"""

import json
import socket
import sys
import time

BOUND = 180.0


def main():
    args = [a for a in sys.argv[1:] if a != "--wait-migration"]
    wait = len(args) != len(sys.argv) - 1
    if len(args) not in (2, 3):
        sys.exit(__doc__)
    sock_path, cmd = args[0], args[1]
    arguments = json.loads(args[2]) if len(args) == 3 else None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(BOUND)
    s.connect(sock_path)
    f = s.makefile("rw")

    def call(name, arguments=None):
        msg = {"execute": name}
        if arguments is not None:
            msg["arguments"] = arguments
        f.write(json.dumps(msg) + "\n")
        f.flush()
        while True:
            line = f.readline()
            if not line:
                sys.exit(f"qmp.py: {name}: the connection closed")
            r = json.loads(line)
            if "event" in r:
                continue
            if "error" in r:
                sys.exit(f"qmp.py: {name}: {r['error']}")
            return r.get("return")

    greeting = json.loads(f.readline())
    if "QMP" not in greeting:
        sys.exit(f"qmp.py: no QMP greeting: {greeting}")
    call("qmp_capabilities")
    if cmd == "quit":
        # QEMU may close the connection before it answers.
        f.write(json.dumps({"execute": "quit"}) + "\n")
        f.flush()
        f.readline()
        return
    print(json.dumps(call(cmd, arguments)))
    if wait:
        deadline = time.monotonic() + BOUND
        while True:
            st = call("query-migrate")
            status = (st or {}).get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                sys.exit(f"qmp.py: migration {status}: {st}")
            if time.monotonic() > deadline:
                sys.exit(f"qmp.py: migration not complete after {BOUND} s: {st}")
            time.sleep(0.1)


main()
