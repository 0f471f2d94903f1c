#!/usr/bin/env bash
# Whole-CLI cost of `suture apply` and `suture revert` of one function (issue 16's 3 ms goal):
# the stopwatch probe of bench-stop.sh runs; a Python driver starts each command with
# posix_spawn and waits for it (wait4), interleaving the designs and /bin/true (the cost of
# starting any process on this machine). Prints, per design and operation, the median wall
# time and the median CPU time (user + system from wait4's rusage: steadier than wall time on
# a loaded machine) and the CPU time's ratio to the first design's.
#
#   [DESIGNS="old=/path/to/suture new=target/release/suture"] scripts/bench-cli.sh [ROUNDS] [STOPWATCH.c]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-200}
src=${2:-../shared/bench/stopwatch.c}
[ -f "$src" ] || { echo "no stopwatch.c at $src" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cargo build --release -q -p suture
suture=${CARGO_TARGET_DIR:-$PWD/target}/release/suture
designs=${DESIGNS:-new=$suture}
source scripts/stopwatch-probe.sh
build_probe "$work" 0
"$work/stopwatch" > /dev/null &
pid=$!
sleep 0.3
echo "load before: $(uptime)"
python3 - "$work/patch.o" "$pid" "$rounds" $designs <<'PY'
import os, statistics, sys, time
patch, pid, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
designs = [spec.split("=", 1) for spec in sys.argv[4:]]
null = os.open(os.devnull, os.O_WRONLY)
def run(argv):
    t = time.perf_counter()
    child = os.posix_spawn(argv[0], argv, os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, null, 1)])
    _, status, usage = os.wait4(child, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{argv} failed")
    return wall * 1e3, (usage.ru_utime + usage.ru_stime) * 1e3
res = {}
for r in range(rounds):
    for name, binary in (designs if r % 2 == 0 else designs[::-1]):
        res.setdefault((name, "apply"), []).append(run([binary, "apply", patch, "--pid", pid, "--id", "cli"]))
        res.setdefault((name, "revert"), []).append(run([binary, "revert", "cli", "--pid", pid]))
    res.setdefault(("/bin/true", ""), []).append(run(["/bin/true"]))
print("| design | operation | wall median ms | CPU median ms | CPU vs first | runs |")
print("|---|---|---|---|---|---|")
first = {}
for (name, op), v in res.items():
    wall, cpu = statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)
    first.setdefault(op, cpu)
    print(f"| {name} | {op} | {wall:.3f} | {cpu:.3f} | {cpu / first[op]:.2f} | {len(v)} |")
PY
echo "load after: $(uptime)"
