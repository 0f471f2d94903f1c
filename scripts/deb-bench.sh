#!/usr/bin/env bash
# deb-bench.sh SUTURE PATCH [COLD] [WARM] [FULL]
#
# Wall time of `suture build --deb libexpat1=<installed> --patch PATCH`, first (a fresh
# SUTURE_DEB_CACHE: download, reconstruction, Debian build, the fix) and repeated (the built
# tree reused), against a full `dpkg-buildpackage -b -uc -us` of the same source tree (a fresh
# copy each time, DEB_BUILD_OPTIONS="nocheck parallel=<cores>" for both). Prints one line per
# run and the medians. COLD, WARM, FULL: run counts (default 3, 5, 3).
set -euo pipefail
exec </dev/null
[[ $# -ge 2 ]] || { echo "usage: ${0##*/} SUTURE PATCH [COLD] [WARM] [FULL]" >&2; exit 1; }
suture=$(realpath "$1"); patch=$(realpath "$2")
cold=${3:-3} warm=${4:-5} full=${5:-3}
jobs=$(nproc)
version=$(dpkg-query -W -f '${Version}' libexpat1)
work=$(mktemp -d /var/tmp/suture-deb-bench.XXXXXX)
trap 'rm -rf -- "$work"' EXIT
now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.1f", m}'; }

: >"$work/cold" ; : >"$work/warm" ; : >"$work/full"
for i in $(seq "$cold"); do
    rm -rf -- "$work/cache" "$work/out"
    t=$(now)
    SUTURE_DEB_CACHE=$work/cache "$suture" build --deb "libexpat1=$version" --patch "$patch" \
        -o "$work/out" >/dev/null 2>"$work/log" || { tail "$work/log" >&2; exit 1; }
    s=$(echo "$(now) - $t" | bc -l); echo "$s" >>"$work/cold"; printf 'first    %6.1f s\n' "$s"
done
for i in $(seq "$warm"); do
    rm -rf -- "$work/out"
    t=$(now)
    SUTURE_DEB_CACHE=$work/cache "$suture" build --deb "libexpat1=$version" --patch "$patch" \
        -o "$work/out" >/dev/null 2>"$work/log" || { tail "$work/log" >&2; exit 1; }
    s=$(echo "$(now) - $t" | bc -l); echo "$s" >>"$work/warm"; printf 'repeated %6.1f s\n' "$s"
done
src=$(ls -d "$work"/cache/src/expat_"$version"/tree)
for i in $(seq "$full"); do
    rm -rf -- "$work/full-tree"; mkdir -p "$work/full-tree"
    cp -a "$src" "$work/full-tree/expat-2.5.0"
    t=$(now)
    # The reconstructed tree keeps deb12u2's debian/libexpat1.symbols (not a patch), which
    # lists a symbol deb12u1 lacks: dpkg-gensymbols would fail the package, not the build.
    (cd "$work/full-tree/expat-2.5.0" && DEB_BUILD_OPTIONS="nocheck parallel=$jobs" \
        DPKG_GENSYMBOLS_CHECK_LEVEL=0 dpkg-buildpackage -b -uc -us) >"$work/log" 2>&1 || { tail "$work/log" >&2; exit 1; }
    s=$(echo "$(now) - $t" | bc -l); echo "$s" >>"$work/full"; printf 'dpkg-buildpackage %6.1f s\n' "$s"
done
[[ -s $work/warm ]] || echo 0 >"$work/warm"
echo "median: first $(median <"$work/cold") s, repeated $(median <"$work/warm") s, dpkg-buildpackage $(median <"$work/full") s"
