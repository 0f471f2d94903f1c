#!/usr/bin/env bash
# kernel-sweep-headers.sh SUTURE OLD_TREE NEW_TREE GUEST OUT [MAX_UNITS]
#
# Second pass of scripts/kernel-sweep.sh over the files of OUT that did not compile alone:
# each file's change is built again together with the headers of the same update that the
# file includes directly (changed between OLD_TREE and NEW_TREE; `#include "x"` next to the
# file, then kbuild's x86 include path), as one fix, with --max-header-units MAX_UNITS
# (default: suture's, 100). A file that includes no changed header fails for another reason (another
# architecture, a .c file of the same update, an include path of its own) and is counted
# apart. Results in OUT/headers/<file>.{diff,json,err}, one line per file in
# OUT/headers/index.txt, and a summary on stdout.
set -uo pipefail
exec </dev/null
[[ $# -ge 5 ]] || { echo "usage: ${0##*/} SUTURE OLD_TREE NEW_TREE GUEST OUT [MAX_UNITS]" >&2; exit 1; }
suture=$(realpath "$1") old=$(realpath "$2") new=$(realpath "$3") guest=$(realpath "$4")
out=$(realpath "$5") limit=${6:-100}
mkdir -p "$out/headers"
python3 - "$out" "$old" "$new" >"$out/headers/plan.txt" <<'PY'
import json, os, re, sys, filecmp
out, old, new = sys.argv[1:4]
paths = ["arch/x86/include", "arch/x86/include/generated", "include", "arch/x86/include/uapi",
         "arch/x86/include/generated/uapi", "include/uapi", "include/generated/uapi"]
for line in open(os.path.join(out, "index.txt")):
    rc, _, _, f = line.split(maxsplit=3)
    f = f.strip()
    name = f.replace("/", "_").replace(".", "_")
    try:
        j = json.load(open(os.path.join(out, name + ".json")))
    except Exception:
        j = {}
    err = j.get("error") or ""
    if j.get("status") or not ("compiling" in err and "failed" in err):
        continue
    headers = []
    text = open(os.path.join(old, f), errors="replace").read()
    for quoted, inc in re.findall(r'^\s*#\s*include\s*(["<])([^">]+)[">]', text, re.M):
        cands = ([os.path.normpath(os.path.join(os.path.dirname(f), inc))] if quoted == '"' else [])
        cands += [os.path.normpath(os.path.join(p, inc)) for p in paths]
        for c in cands:
            if os.path.isfile(os.path.join(old, c)):
                if os.path.isfile(os.path.join(new, c)) and not filecmp.cmp(
                        os.path.join(old, c), os.path.join(new, c), shallow=False):
                    headers.append(c)
                break
    print(f, *headers)
PY
while read -r f headers; do
    name=$(echo "$f" | tr '/.' '__')
    [[ -s $out/headers/$name.json ]] && continue
    if [[ -z $headers ]]; then
        echo "none 0s $f" >>"$out/headers/index.txt"
        continue
    fi
    : >"$out/headers/$name.diff"
    for g in $f $headers; do
        diff -u --label "a/$g" --label "b/$g" "$old/$g" "$new/$g" >>"$out/headers/$name.diff"
    done
    start=$(date +%s)
    timeout 1800 "$suture" build --kernel --json --id "sweep_$$" --source "$old" \
        --diff "$out/headers/$name.diff" -o "$out/headers/work" --kallsyms "$guest/kallsyms" \
        --kernel-notes "$guest/notes" --modules "$guest/modules" --max-header-units "$limit" \
        >"$out/headers/$name.json" 2>"$out/headers/$name.err"
    echo "$? $(( $(date +%s) - start ))s $f $headers" >>"$out/headers/index.txt"
done <"$out/headers/plan.txt"
rm -rf -- "$out/headers/work"
python3 - "$out/headers" <<'PY'
import collections, json, os, sys
out = sys.argv[1]
kinds = collections.Counter()
for line in open(os.path.join(out, "index.txt")):
    rc, secs, f, *headers = line.split()
    name = f.replace("/", "_").replace(".", "_")
    if rc == "none":
        kinds["includes no changed header (fails for another reason)"] += 1
        continue
    try:
        j = json.load(open(os.path.join(out, name + ".json")))
    except Exception:
        j = {}
    st = j.get("status")
    reasons = [r["reason"] for r in j.get("reasons", [])]
    if st == "built":
        rebuilt = sum(len(h["units"]) for h in j.get("headers", []))
        kinds["built"] += 1
        print(f"built    {f} (+{' '.join(headers)}; {rebuilt} units rebuilt, {secs})")
    elif st == "no-change":
        kinds["no change / not in this configuration"] += 1
    elif st == "unsupported" and any("--max-header-units" in r for r in reasons):
        kinds["refused: headers reach more units than the limit"] += 1
        print(f"limit    {f} (+{' '.join(headers)}): {reasons[0][:140]}")
    elif st == "unsupported" and any("changes its layout" in r for r in reasons):
        kinds["refused: a data layout changes"] += 1
        print(f"layout   {f}: {reasons[0][:160]}")
    elif st == "unsupported":
        kinds["refused: other"] += 1
        print(f"refused  {f}: {reasons[0][:160]}")
    else:
        kinds["still does not compile (needs more of the update)"] += 1
        err = (j.get("error") or "").splitlines()
        print(f"compile  {f}: {' '.join(err[1:3])[:160]}")
print(f"\n{sum(kinds.values())} files")
for k, v in kinds.most_common():
    print(f"{v:4}  {k}")
PY
