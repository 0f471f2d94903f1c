#!/usr/bin/env bash
# memcached-bench.sh CACHE [RUNS]
#
# Time from diff to bundle for Debian's memcached security update (the CVE patches in
# CACHE/memcached/cve.diff, prepared by scripts/memcached-case.sh), against one plain full
# build of the package. Tree: vuln-pwdb-src (Debian's package without its CVE patches,
# configured with Debian's flags plus --enable-sasl-pwdb, so that the SASL fix has code).
# Each figure is the median of RUNS runs (default 3), wall-clock seconds:
#
#   full     `debian/rules build` (dh: autoreconf, configure, make -j$(nproc) all) in a fresh
#            copy: one plain full build of the package
#   plain    the build `suture build` runs (suture-build-cmd.txt: Debian's configure step, then
#            make of the memcached binary only), without suture, in a fresh copy
#   cold     `suture build --target vuln-pwdb/memcached` in a fresh copy: that build, recorded,
#            then the affected unit rebuilt both ways, diffed, bound and bundled
#   warm     the same `suture build` again on the same tree and output directory (configured
#            and built already: make compiles nothing, the record is reused; only the affected
#            unit is rebuilt)
#   tu       without `suture build`: the one affected unit (sasl_defs.c) compiled before and
#            after with the tree's own command + function sections, and `suture diff -o`
#
# Prints a Markdown table; SUTURE (default: `suture` in PATH, else target/release/suture).
set -euo pipefail
exec </dev/null

me=${0##*/}
die() { echo "$me: error: $*" >&2; exit 1; }
log() { echo "$me: $*" >&2; }

[[ $# -ge 1 && $# -le 2 ]] || die "usage: $me CACHE [RUNS]"
here=$(cd "$(dirname "$0")" && pwd)
cache=$(realpath -- "$1")
runs=${2:-3}
case=$cache/memcached
[[ -f $case/.ready ]] || bash "$here/memcached-case.sh" "$cache"
suture=${SUTURE:-$(command -v suture || echo "$here/../target/release/suture")}
[[ -x $suture ]] || die "no suture binary ($suture); cargo build --release -p suture or set SUTURE"
build_cmd=$(cat "$case/build-cmd.txt")
sbuild_cmd=$(cat "$case/suture-build-cmd.txt")
target=$case/vuln-pwdb/memcached
have_build=0
"$suture" build --help >/dev/null 2>&1 && have_build=1

work=$(mktemp -d "${TMPDIR:-/var/tmp}/suture-mc-bench.XXXXXX")
trap 'rm -rf -- "$work"' EXIT

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc -l; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

full=() plain=() cold=() warm=() tu=() outcomes=()
for ((i = 1; i <= runs; i++)); do
    log "run $i/$runs: full build"
    rm -rf -- "$work/t"
    cp -a -- "$case/vuln-pwdb-src" "$work/t"
    s=$(now)
    (cd "$work/t" && bash -c "$build_cmd") >"$work/full.log" 2>&1 || die "full build failed ($work/full.log)"
    full+=("$(since "$s")")

    log "run $i/$runs: plain build of the memcached binary"
    rm -rf -- "$work/t"
    cp -a -- "$case/vuln-pwdb-src" "$work/t"
    s=$(now)
    (cd "$work/t" && sh -c "$sbuild_cmd") >"$work/plain.log" 2>&1 || die "plain build failed ($work/plain.log)"
    plain+=("$(since "$s")")

    if ((have_build)); then
        log "run $i/$runs: suture build (cold)"
        rm -rf -- "$work/t" "$work/out"
        cp -a -- "$case/vuln-pwdb-src" "$work/t"
        s=$(now)
        rc=0
        "$suture" build --source "$work/t" --diff "$case/cve.diff" --build-cmd "$sbuild_cmd" \
            --target "$target" -o "$work/out" >"$work/cold.log" 2>&1 || rc=$?
        cold+=("$(since "$s")")
        # 0 bundle written, 2 refused, 3 no change: all ran the whole pipeline; 1 is an error.
        ((rc != 1)) || die "suture build failed ($work/cold.log)"
        outcomes+=("cold:$rc")
        log "run $i/$runs: suture build (warm)"
        s=$(now)
        rc=0
        "$suture" build --source "$work/t" --diff "$case/cve.diff" --build-cmd "$sbuild_cmd" \
            --target "$target" -o "$work/out" >"$work/warm.log" 2>&1 || rc=$?
        warm+=("$(since "$s")")
        ((rc != 1)) || die "suture build (warm) failed ($work/warm.log)"
        outcomes+=("warm:$rc")
    fi

    log "run $i/$runs: one unit both ways + suture diff"
    cmd=$(sed 's/<root>/ROOT/g' "$case/tu/vuln-pwdb/compile.txt")
    rm -rf -- "$work/a" "$work/b"
    cp -a -- "$case/vuln-pwdb" "$work/a"
    cp -a -- "$case/vuln-pwdb" "$work/b"
    patch -d "$work/b" -p1 --quiet -i "$case/cve.diff"
    s=$(now)
    (cd "$work/a" && bash -c "${cmd//ROOT/$work/a}") && mv "$work/a/memcached-sasl_defs.o" "$work/o.o"
    (cd "$work/b" && bash -c "${cmd//ROOT/$work/b}") && mv "$work/b/memcached-sasl_defs.o" "$work/p.o"
    "$suture" diff "$work/o.o" "$work/p.o" -o "$work/patch.o" >/dev/null
    tu+=("$(since "$s")")
done

row() { # name values...
    local name=$1
    shift
    (($#)) || { echo "| $name | (suture build not available) | |"; return; }
    printf '| %s | %.2f | %s |\n' "$name" "$(printf '%s\n' "$@" | median)" \
        "$(printf '%.2f ' "$@")"
}
echo "| memcached $(sed -n 's/^version: *//p' "$case/.ready"), $runs runs | median s | runs (s) |"
echo "|---|---|---|"
row "full build (\`debian/rules build\`)" "${full[@]}"
row "plain build of the binary (suture-build-cmd.txt)" "${plain[@]}"
row "\`suture build\`, cold" "${cold[@]}"
row "\`suture build\`, warm" "${warm[@]}"
row "one unit both ways + \`suture diff\`" "${tu[@]}"
echo
echo "suture build exit codes: ${outcomes[*]:-none} (0 bundle written, 2 refused, 3 no change)"
