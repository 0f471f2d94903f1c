#!/usr/bin/env bash
# The window during which a process started after a patch went live runs unpatched
# (docs/benchmarks.md, docs/fleet.md): a daemon agent (`--interval 3600`, so only its passes
# for new processes patch anything) and a program started N times one after another; for
# each start, the agent's report of the pass that patched it gives `exec_to_live_us` (exec
# events: from the kernel's timestamp of the exec to the patch live) or `process_age_ms`
# (polling: the process's age when the patch went live, in clock ticks of 10 ms).
# Usage: scripts/bench-fleet-exec.sh SUTURE_BINARY FIXTURE_DIR [STARTS] [events|polling]
#   FIXTURE_DIR holds src/prog and out-fix/prog.suture, as crates/suture/tests/fleet.rs builds them
#   (target/tmp/fleet/fixture-<pid>).
set -euo pipefail
exec python3 - "$@" <<'PY'
import json, os, signal, statistics, subprocess, sys, tempfile, time

suture, fixture = sys.argv[1], sys.argv[2]
starts = int(sys.argv[3]) if len(sys.argv) > 3 else 50
mode = sys.argv[4] if len(sys.argv) > 4 else "events"
w = tempfile.mkdtemp()
procs = []
try:
    subprocess.run([suture, "repo", "init", f"{w}/repo", "--keys", f"{w}/keys"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run([suture, "repo", "add", f"{w}/repo", f"{fixture}/out-fix/prog.suture",
                    "--keys", f"{w}/keys"], check=True, stdout=subprocess.DEVNULL)
    http = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1",
                             "--directory", f"{w}/repo"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    procs.append(http)
    port = http.stdout.readline().split("port ")[1].split()[0]
    # The programs are started by this shell (the agent's scope, --pid).
    shell = subprocess.Popen(["sh", "-c", 'while read cmd; do "$0" >/dev/null & echo $!; done',
                              f"{fixture}/src/prog"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    procs.append(shell)
    args = [suture, "agent", "--repo", f"http://127.0.0.1:{port}/", "--trust",
            f"{w}/repo/metadata/1.root.json", "--state", f"{w}/state", "--pid", str(shell.pid),
            "--interval", "3600", "--health-settle", "0", "--json"]
    args += ["--rescan", "0"] if mode == "events" else ["--no-exec-events", "--rescan", "1"]
    out = open(f"{w}/agent.json", "w")
    agent = subprocess.Popen(args, stdout=out, stderr=subprocess.DEVNULL)
    procs.append(agent)

    def reports():
        text, dec, pos, got = open(f"{w}/agent.json").read(), json.JSONDecoder(), 0, []
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos >= len(text):
                return got
            try:
                v, pos = dec.raw_decode(text, pos)
            except ValueError:
                return got
            got.append(v)

    while not reports():
        time.sleep(0.05)
    windows = []
    for i in range(starts):
        shell.stdin.write("go\n")
        shell.stdin.flush()
        pid = int(shell.stdout.readline())
        deadline = time.time() + 60
        found = None
        while found is None and time.time() < deadline:
            for r in reports():
                for a in r["applied"]:
                    if a["pid"] == pid:
                        found = (r["trigger"], a["exec_to_live_us"], a["process_age_ms"])
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        if found is None:
            sys.exit(f"start {i}: pid {pid} was not patched within 60 s")
        windows.append(found)
    triggers = sorted({t for t, _, _ in windows})
    if mode == "events":
        us = [e for _, e, _ in windows]
        print(f"starts={starts} trigger={triggers} exec_to_live_ms median={statistics.median(us)/1000:.1f} "
              f"min={min(us)/1000:.1f} max={max(us)/1000:.1f}")
    else:
        ms = [a for _, _, a in windows]
        print(f"starts={starts} trigger={triggers} process_age_ms median={statistics.median(ms)} "
              f"min={min(ms)} max={max(ms)}")
finally:
    for p in reversed(procs):
        p.kill()
        p.wait()
    subprocess.run(["rm", "-rf", w])
PY
