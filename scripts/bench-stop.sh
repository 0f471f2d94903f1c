#!/usr/bin/env bash
# Stop-window benchmark (method of shared/bench/README.md): the stopwatch probe's main thread
# spins calling version(); any gap between two iterations is time the process was stopped.
# For each thread count, CYCLES times: apply a patch making version() return 2, then revert;
# an operation's stop window is the largest gap starting inside it. Prints Markdown tables:
# the target-observed windows (and the wall time of each whole CLI call, from the driver's
# fork to the child's exit), then where suture's own view of each stop went (`stop_phases` of
# `suture apply --json` / `suture revert --json`).
#
# A second probe adds 100 functions that the patch also changes (101 redirects), to compare
# the stop window with 1 and with 101 patched functions.
#
# Several designs can be compared in one run: DESIGNS="name=BINARY[,VAR=value...] ..." runs
# each cycle's apply + revert with every design in turn (the order alternates from one cycle
# to the next, so a loaded moment hits all of them); the default is this tree's release build.
# For example, the old design on another binary against this one, and this one with the
# commit routine run in the target:
#   DESIGNS="old=/path/to/suture new=target/release/suture routine=target/release/suture,SUTURE_COMMIT=routine"
#
#   [DESIGNS=...] [SETS="one 0,one 64"] scripts/bench-stop.sh [CYCLES] [STOPWATCH.c]
set -euo pipefail
cd "$(dirname "$0")/.."
cycles=${1:-100}
src=${2:-../shared/bench/stopwatch.c}
[ -f "$src" ] || { echo "no stopwatch.c at $src" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cargo build --release -q -p suture
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
suture=$target_dir/release/suture
designs=${DESIGNS:-new=$suture}
source scripts/stopwatch-probe.sh
build_probe "$work/one" 0
build_probe "$work/wide" 100

echo "load before: $(uptime)"
echo
echo "| design | functions | threads | operation | min ms | median ms | p90 ms | cycles | CLI wall median ms |"
echo "|---|---|---|---|---|---|---|---|---|"
# SETS: which probes and extra thread counts to run ("one" has 1 function, "wide" 101).
IFS=, read -r -a sets <<< "${SETS:-one 0,one 8,one 64,wide 0,wide 64}"
for set in "${sets[@]}"; do
    read -r name extra <<< "$set"
    d="$work/$name"
    "$d/stopwatch" "$extra" > "$d/gaps.$extra" &
    pid=$!
    sleep 0.3
    python3 - "$d" "$pid" "$extra" "$cycles" $designs <<'PY'
# Drive the cycles (times from CLOCK_MONOTONIC, the probe's clock), then read the probe.
import json, os, statistics, subprocess, sys, time
d, pid, extra, cycles = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
designs = []
for spec in sys.argv[5:]:
    name, rest = spec.split("=", 1)
    binary, *env = rest.split(",")
    designs.append((name, binary, dict(kv.split("=", 1) for kv in env)))
funcs = 1 if os.path.basename(d) == "one" else 101
ops = []  # (design, op, t0, t1, json)
probe = open(f"{d}/gaps.{extra}")
partial = ""
def shows(want, since):
    """Waits (up to 2 s) for the probe's line saying version() returns `want` now: every
    apply must show v=2 and every revert v=1 (the probe prints a line whenever version()
    changes; a probe whose call the compiler hoisted out of its loop never would). Waiting
    also keeps the next operation from starting before the probe ran again."""
    global partial
    limit = time.monotonic() + 2
    while time.monotonic() < limit:
        line = probe.readline()
        if not line:
            time.sleep(0.0005)
            continue
        # A line the probe has not finished writing comes back in pieces.
        partial += line
        if not partial.endswith("\n"):
            continue
        line, partial = partial, ""
        f = line.split()
        if f and f[0] == "GAP" and f[3] == want and int(f[1]) >= since:
            return True
    return False
for c in range(cycles):
    order = designs if c % 2 == 0 else designs[::-1]
    for name, binary, env in order:
        e = dict(os.environ, **env)
        for op in ("apply", "revert"):
            cmd = [binary, "apply", f"{d}/patch.o", "--pid", pid, "--id", "bench", "--json"] \
                if op == "apply" else [binary, "revert", "bench", "--pid", pid, "--json"]
            t0 = time.monotonic_ns()
            out = subprocess.run(cmd, env=e, capture_output=True, text=True)
            t1 = time.monotonic_ns()
            if out.returncode != 0:
                sys.exit(f"{name} {op} failed: {out.stdout}{out.stderr}")
            ops.append((name, op, t0, t1, json.loads(out.stdout)))
            want = "v=2" if op == "apply" else "v=1"
            if not shows(want, t0):
                sys.exit(f"{name} {op} (cycle {c}): the probe never showed {want}")
time.sleep(0.05)
gaps = []
for line in open(f"{d}/gaps.{extra}"):
    f = line.split()
    if f and f[0] == "GAP":
        gaps.append((int(f[1]), int(f[2])))
rows, phases = [], []
keys = ["stop_us", "registers_us", "stacks_us", "check_us", "scan_us", "commit_us", "resume_us"]
for name, _, _ in designs:
    for op in ("apply", "revert"):
        sel = [(t0, t1, doc) for n, o, t0, t1, doc in ops if n == name and o == op]
        v = sorted(max([g for s, g in gaps if t0 <= s <= t1], default=0) / 1e6 for t0, t1, _ in sel)
        p90 = v[min(len(v) - 1, int(round(0.9 * (len(v) - 1))))]
        wall = statistics.median((t1 - t0) / 1e6 for t0, t1, _ in sel)
        print(f"| {name} | {funcs} | {extra + 1} | {op} | {v[0]:.3f} | {statistics.median(v):.3f} | {p90:.3f} | {len(v)} | {wall:.2f} |")
        res = [p.get("result", p) for _, _, doc in sel for p in doc["processes"]]
        res = [r for r in res if "stop_phases" in r]
        if res:
            med = [statistics.median(r["stop_phases"][k] for r in res) for k in keys]
            total = statistics.median(r["stop_window_us"] for r in res)
            phases.append(f"| {name} | {funcs} | {extra + 1} | {op} | " + " | ".join(f"{m:.0f}" for m in med) + f" | {total:.0f} |")
with open(f"{os.path.dirname(d)}/phases.md", "a") as f:
    f.write("".join(p + "\n" for p in phases))
PY
    kill "$pid"; wait "$pid" 2>/dev/null || true
done

# Where each stop's time goes, as suture sees it: medians per phase, in microseconds
# (suture's window starts before the first thread stops and ends after the last resumes).
echo
echo "| design | functions | threads | operation | stop | registers | stacks | check | scan | commit | resume | total |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
cat "$work/phases.md" 2>/dev/null || true
echo
echo "load after: $(uptime)"
