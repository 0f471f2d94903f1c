#!/usr/bin/env bash
# kernel-sweep.sh SUTURE OLD_TREE NEW_TREE GUEST OUT [COUNT] [SEED] [MAX_LINES]
#
# Build-only sweep of real kernel changes: every .c file that differs between two prepared
# Debian kernel trees (scripts/kernel-releases.sh), with at most MAX_LINES changed lines
# (default 12), outside other architectures and staging; COUNT of them (default 60) picked
# with a fixed SEED (default 42). Each file's change is built on its own with `suture build
# --kernel` for OLD_TREE's release, against GUEST's kallsyms, notes and modules (the older
# image, scripts/guest-kernel.sh). Results per file in OUT/<file>.json and .err, one line per
# file in OUT/index.txt, and a summary of outcomes and refusal reasons on stdout.
#
# A file whose change cannot compile on its own (the same update also changed a header it
# needs) is counted apart: the sweep takes files, not commits, and suture refuses headers.
set -uo pipefail
exec </dev/null
[[ $# -ge 5 ]] || { echo "usage: ${0##*/} SUTURE OLD_TREE NEW_TREE GUEST OUT [COUNT] [SEED] [MAX_LINES]" >&2; exit 1; }
suture=$(realpath "$1") old=$(realpath "$2") new=$(realpath "$3") guest=$(realpath "$4")
out=$(realpath -m "$5") count=${6:-60} seed=${7:-42} max=${8:-12}
mkdir -p "$out"
if [[ ! -f $out/sample.txt ]]; then
    (cd "$old" && diff -rq . "$new" 2>/dev/null) | awk '/^Files .*\.c and/ {print $2}' | sed 's|^\./||' |
        grep -Ev '^(arch/(arm|arm64|powerpc|mips|s390|riscv|loongarch|sparc|m68k|parisc|sh|xtensa|alpha|arc|csky|hexagon|ia64|microblaze|nios2|openrisc|um)|drivers/staging|tools|samples|scripts)/' |
        while read -r f; do
            n=$(diff -u "$old/$f" "$new/$f" | grep -c '^[-+][^-+]')
            ((n <= max)) && echo "$n $f"
        done | sort -k2 | shuf --random-source=<(yes "$seed") | head -n "$count" >"$out/sample.txt"
fi
while read -r n f; do
    name=$(echo "$f" | tr '/.' '__')
    [[ -s $out/$name.json ]] && continue
    diff -u --label "a/$f" --label "b/$f" "$old/$f" "$new/$f" >"$out/$name.diff"
    start=$(date +%s)
    timeout 900 "$suture" build --kernel --json --id "sweep_$$" --source "$old" --diff "$out/$name.diff" \
        -o "$out/work" --kallsyms "$guest/kallsyms" --kernel-notes "$guest/notes" \
        --modules "$guest/modules" >"$out/$name.json" 2>"$out/$name.err"
    echo "$? $(( $(date +%s) - start ))s $n $f" >>"$out/index.txt"
done <"$out/sample.txt"
rm -rf -- "$out/work"
python3 - "$out" <<'PY'
import collections, json, os, sys
out = sys.argv[1]
kinds = collections.Counter()
reasons = collections.Counter()
for line in open(os.path.join(out, "index.txt")):
    rc, _, _, f = line.split(maxsplit=3)
    f = f.strip()
    name = f.replace("/", "_").replace(".", "_")
    try:
        j = json.load(open(os.path.join(out, name + ".json")))
    except Exception:
        j = {}
    st = j.get("status")
    err = open(os.path.join(out, name + ".err")).read()
    if st == "built":
        kinds["built"] += 1
    elif st == "no-change" and j.get("not_built"):
        kinds["not in this kernel's configuration"] += 1
    elif st == "no-change":
        kinds["no change in the compiled code"] += 1
    elif st == "unsupported":
        kinds["refused"] += 1
        for r in j.get("reasons", []):
            text = r["reason"]
            key = text.split(":")[0] if r.get("kind") else text
            for word in ("is defined", "has no ftrace entry", "is referenced from", "initial value",
                         "start-up code", "is neither exported", "changes its definition"):
                if word in text:
                    key = word
            reasons[key] += 1
            print(f"refused  {f}: {r.get('symbol')}: {text[:160]}")
    elif "compiling" in (j.get("error") or err) and "failed" in (j.get("error") or err):
        kinds["does not compile alone (needs a header change of the same update)"] += 1
    else:
        kinds["error"] += 1
        print(f"error    {f}: {(j.get('error') or err)[-200:]!r}")
total = sum(kinds.values())
print(f"\n{total} files")
for k, v in kinds.most_common():
    print(f"{v:4}  {k}")
if reasons:
    print("\nrefusal reasons (per symbol):")
    for k, v in reasons.most_common():
        print(f"{v:4}  {k}")
PY
