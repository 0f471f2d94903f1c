#!/usr/bin/env bash
# Stop-window benchmark (method of shared/bench/README.md): the stopwatch probe's main thread
# spins calling version(); any gap between two iterations is time the process was stopped.
# For each thread count, CYCLES times: apply a patch making version() return 2, then revert;
# an operation's stop window is the largest gap starting inside it. Prints a Markdown table.
#
# A second probe adds 100 functions that the patch also changes (101 redirects), to compare
# the stop window with 1 and with 101 patched functions.
#
#   scripts/bench-stop.sh [CYCLES] [STOPWATCH.c]
set -euo pipefail
cd "$(dirname "$0")/.."
cycles=${1:-100}
src=${2:-../shared/bench/stopwatch.c}
[ -f "$src" ] || { echo "no stopwatch.c at $src" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cargo build --release -q -p suture
suture=$PWD/target/release/suture
# build NAME EXTRA_FUNCTIONS: probe binary and patch for it in $work/NAME/
build() {
    local d="$work/$1" n=$2
    mkdir -p "$d/orig" "$d/fixed"
    cp "$src" "$d/orig/stopwatch.c"
    for i in $(seq 0 $((n - 1))); do
        echo "__attribute__((noinline)) int extra$i(int x) { return x + $i; }" >> "$d/orig/stopwatch.c"
    done
    sed -e 's/^\treturn 1;$/\treturn 2;/' -e 's/return x + \([0-9]*\); }/return x + \1 + 1; }/' \
        "$d/orig/stopwatch.c" > "$d/fixed/stopwatch.c"
    for side in orig fixed; do
        (cd "$d/$side" && gcc -c -O2 -g -ffunction-sections -fdata-sections stopwatch.c -o stopwatch.o)
    done
    gcc -pthread "$d/orig/stopwatch.o" -o "$d/stopwatch"
    "$suture" diff "$d/orig/stopwatch.o" "$d/fixed/stopwatch.o" -o "$d/patch.o" >/dev/null
}
build one 0
build wide 100

phases_of=()
echo "| functions | threads | operation | min ms | median ms | p90 ms | cycles |"
echo "|---|---|---|---|---|---|---|"
for set in "one 0" "one 8" "one 64" "wide 0" "wide 64"; do
    read -r name extra <<< "$set"
    d="$work/$name"
    funcs=$([ "$name" = one ] && echo 1 || echo 101)
    "$d/stopwatch" "$extra" > "$d/gaps.$extra" &
    pid=$!
    sleep 0.3
    : > "$d/ops.$extra"
    for _ in $(seq "$cycles"); do
        for op in apply revert; do
            t0=$(python3 -c 'import time; print(time.monotonic_ns())')
            if [ "$op" = apply ]; then
                "$suture" apply "$d/patch.o" --pid "$pid" --id bench --json >> "$d/json.$extra"
            else
                "$suture" revert bench --pid "$pid" >/dev/null
            fi
            t1=$(python3 -c 'import time; print(time.monotonic_ns())')
            echo "$op $t0 $t1" >> "$d/ops.$extra"
        done
    done
    kill "$pid"; wait "$pid" 2>/dev/null || true
    phases_of+=("$d/json.$extra $funcs $((extra + 1))")
    python3 - "$d/gaps.$extra" "$d/ops.$extra" "$((extra + 1))" "$funcs" <<'PY'
import statistics, sys
gaps = []
versions = []  # (start_ns, version) of every GAP line
for line in open(sys.argv[1]):
    f = line.split()
    if f and f[0] == "GAP":
        gaps.append((int(f[1]), int(f[2])))
        versions.append((int(f[1]), f[3]))
res = {"apply": [], "revert": []}
ops = [(op, int(t0), int(t1)) for op, t0, t1 in (l.split() for l in open(sys.argv[2]))]
for op, t0, t1 in ops:
    inside = [g for s, g in gaps if t0 <= s <= t1]
    res[op].append(max(inside) / 1e6 if inside else 0.0)
# Every apply must show the new version before the next revert starts (the probe prints a line
# when version() changes): a probe whose call the compiler hoisted would never show it.
seen = 0
for i, (op, t0, _) in enumerate(ops):
    if op != "apply":
        continue
    end = ops[i + 1][1] if i + 1 < len(ops) else float("inf")
    seen += any(t0 <= s <= end and v == "v=2" for s, v in versions)
applies = sum(1 for op, _, _ in ops if op == "apply")
if seen != applies:
    sys.exit(f"only {seen} of {applies} applies showed v=2 in the probe")
for op, v in res.items():
    v.sort()
    p90 = v[min(len(v) - 1, int(round(0.9 * (len(v) - 1))))]
    print(f"| {sys.argv[4]} | {sys.argv[3]} | {op} | {v[0]:.3f} | {statistics.median(v):.3f} | {p90:.3f} | {len(v)} |")
PY
done

# Where the apply stop's time goes (suture's view, `stop_phases` of `suture apply --json`):
# medians per phase, in microseconds.
echo
echo "| functions | threads | stop | registers | stacks | check | scan | commit | resume | total |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for entry in "${phases_of[@]}"; do
    read -r file funcs threads <<< "$entry"
    python3 - "$file" "$funcs" "$threads" <<'PY'
import json, statistics, sys
dec = json.JSONDecoder()
text = open(sys.argv[1]).read()
docs, i = [], 0
while i < len(text):
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text):
        break
    obj, i = dec.raw_decode(text, i)
    docs.append(obj)
results = [p["result"] for d in docs for p in d["processes"] if p.get("applied")]
keys = ["stop_us", "registers_us", "stacks_us", "check_us", "scan_us", "commit_us", "resume_us"]
med = [statistics.median(r["stop_phases"][k] for r in results) for k in keys]
total = statistics.median(r["stop_window_us"] for r in results)
print(f"| {sys.argv[2]} | {sys.argv[3]} | " + " | ".join(f"{m:.0f}" for m in med) + f" | {total:.0f} |")
PY
done
