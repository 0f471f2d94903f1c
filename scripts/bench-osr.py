#!/usr/bin/env python3
"""On-stack replacement benchmark: the stop window of an apply and a revert that move waiting
frames, next to the plain switch of the same fix, in one run.

The target is the threaded server of crates/suture-process/tests/fixtures/osr/conn.c (gcc -O2
-g): one thread per connection, each waiting in read() inside connection(). Built as is, the
fix's helper is inlined into connection(), which the patch replaces: every connection's frame
moves (OSR). Built with -DOUTLINE, the helper is a function of its own and the patch replaces
only it: nothing waits in replaced code (the plain switch) with the same threads. Servers run
side by side with 1, 8 and 64 open connections of each build (and one inline server with none).
Each cycle applies and reverts the patch object on every server in turn (the order rotates per
cycle, so a loaded moment hits all of them) and records suture's own stop window
(`stop_window_us`) and its phases from `--json`.

    scripts/bench-osr.py SUTURE [CYCLES]
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
src = os.path.join(here, "../crates/suture-process/tests/fixtures/osr/conn.c")
suture = sys.argv[1]
cycles = int(sys.argv[2]) if len(sys.argv) > 2 else 30
work = tempfile.mkdtemp(prefix="bench-osr.")
flags = ["-O2", "-g", "-ffunction-sections", "-fdata-sections", "-c", src]
for kind, extra in (("osr", []), ("plain", ["-DOUTLINE"])):
    subprocess.run(["gcc", *flags, *extra, "-o", f"{work}/{kind}-orig.o"], check=True)
    subprocess.run(["gcc", *flags, *extra, "-DFIXED", "-o", f"{work}/{kind}-fixed.o"],
                   check=True)
    subprocess.run(["gcc", f"{work}/{kind}-orig.o", "-o", f"{work}/{kind}-server", "-lpthread"],
                   check=True)
    subprocess.run([suture, "diff", f"{work}/{kind}-orig.o", f"{work}/{kind}-fixed.o", "-o",
                    f"{work}/{kind}-fix.o"], check=True, stdout=subprocess.DEVNULL)

servers = {}
for kind, n in (("osr", 0), ("osr", 1), ("plain", 1), ("osr", 8), ("plain", 8), ("osr", 64),
                ("plain", 64)):
    p = subprocess.Popen([f"{work}/{kind}-server"], stdout=subprocess.PIPE, text=True)
    port = int(p.stdout.readline().split()[1])
    conns = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"hi")
        s.recv(100)
        conns.append(s)
    servers[(kind, n)] = (p, conns)


def run(args):
    out = subprocess.run([suture, *args, "--json", "--timeout", "60"], capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise SystemExit(f"suture {' '.join(args)} failed: {out.stderr}{out.stdout}")
    return json.loads(out.stdout)["processes"][0]


rows = {n: {"apply": [], "revert": [], "moved": set(), "phases": []} for n in servers}
order = list(servers)
for c in range(cycles):
    order = order[1:] + order[:1]
    for n in order:
        pid = str(servers[n][0].pid)
        a = run(["apply", f"{work}/{n[0]}-fix.o", "--pid", pid, "--id", "bench"])
        r = run(["revert", "bench", "--pid", pid])
        rows[n]["apply"].append(a["result"]["stop_window_us"])
        rows[n]["revert"].append(r["stop_window_us"])
        rows[n]["moved"].add(len(a["result"]["moved_frames"]))
        rows[n]["phases"].append(a["result"]["stop_phases"])
        # Every waiting thread answers from the original code again.
        for s in servers[n][1][:2]:
            s.sendall(b"hi")
            assert s.recv(100).startswith(b"v=1 "), "a connection did not answer"

print(f"{cycles} cycles per case, suture's own view of the stop (stop_window_us), medians\n")
print("| build | open connections (frames moved) | apply stop | revert stop | apply vs plain | "
      "check | commit |")
print("|---|---|---|---|---|---|---|")
for (kind, n), r in rows.items():
    a = statistics.median(r["apply"])
    v = statistics.median(r["revert"])
    plain = rows.get(("plain", n))
    ratio = f"{a / statistics.median(plain['apply']):.2f}x" if plain else "-"
    check = statistics.median(p["check_us"] for p in r["phases"])
    commit = statistics.median(p["commit_us"] for p in r["phases"])
    moved = "/".join(str(m) for m in sorted(r["moved"]))
    print(f"| {kind} | {n} ({moved}) | {a / 1000:.3f} ms | {v / 1000:.3f} ms | {ratio} | "
          f"{check} us | {commit} us |")
for p, conns in servers.values():
    for s in conns:
        s.close()
    p.kill()
