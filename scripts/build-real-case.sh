#!/usr/bin/env bash
# build-real-case.sh CASEDIR OUTDIR
#
# Builds OUTDIR/orig.o and OUTDIR/patched.o for one real-project case
# (crates/suture-object/tests/real/<case>/, see the README there):
#   1. fetches the Debian source package `package:` with scripts/debian-source.sh,
#   2. installs the Debian packages listed in `needs:` (if missing),
#   3. copies it to a build tree and runs `prepare:` there once (e.g. ./configure),
#   4. copies the prepared tree and applies fix.diff (-p1) to the copy,
#   5. compiles `file:` (a path from the source root) in both trees, in directory `dir:` (from
#      the source root, default the root), with the same command:
#        gcc $(dpkg-buildflags --get CPPFLAGS) $(dpkg-buildflags --get CFLAGS) \
#            -fcf-protection -ffunction-sections -fdata-sections <cflags:> -c <file:>
#      dpkg-buildflags runs in each tree's root, so -ffile-prefix-map maps both roots to `.`
#      and the two objects differ only where the fix makes them differ.
# OUTDIR also gets compile.txt (the exact command) and orig.c/patched.c (the TU sources).
#
# Environment:
#   SUTURE_DEBIAN_SRC   where unpacked sources are kept   (default /work/debian-src)
#   SUTURE_REAL_BUILD   where build trees are kept         (default /tmp/suture-real-build)
#   CC                  compiler                           (default gcc)
set -euo pipefail
exec </dev/null

me=${0##*/}
die() { echo "$me: error: $*" >&2; exit 1; }
log() { echo "$me: $*" >&2; }

[[ $# -eq 2 ]] || die "usage: $me CASEDIR OUTDIR"
here=$(cd "$(dirname "$0")" && pwd)
casedir=$(realpath -- "$1")
outdir=$(realpath -m -- "$2")
case=$(basename "$casedir")
srcroot=${SUTURE_DEBIAN_SRC:-/work/debian-src}
buildroot=${SUTURE_REAL_BUILD:-/tmp/suture-real-build}
cc=${CC:-gcc}

[[ -f $casedir/source.txt ]] || die "$casedir/source.txt not found"
[[ -f $casedir/fix.diff ]] || die "$casedir/fix.diff not found"

# key: value lines; `#` starts a comment line. Later lines of the same key are appended.
key() {
    awk -v k="$1" 'index($0, k ":") == 1 { v = substr($0, length(k) + 2); sub(/^[ \t]+/, "", v);
                   out = out (out == "" ? "" : " ") v } END { print out }' "$casedir/source.txt"
}
package=$(key package)
file=$(key file)
prepare=$(key prepare)
cflags=$(key cflags)
needs=$(key needs)
dir=$(key dir)
dir=${dir:-.}
[[ -n $package ]] || die "$casedir/source.txt has no 'package:'"
[[ -n $file ]] || die "$casedir/source.txt has no 'file:'"

# 1. source (first: on a fresh machine it also sets up apt and its lists)
src=$srcroot/$package
"$here/debian-source.sh" "$package" "$src"
version=$(sed -n 's/^version: *//p' "$src/.suture-source.stamp")
[[ -f $src/$file ]] || die "$file not found in $package $version ($src)"
[[ -d $src/$dir ]] || die "dir $dir not found in $package $version ($src)"
rel=$(realpath -m --relative-to="$src/$dir" -- "$src/$file")

# 2. build dependencies
missing=()
for p in $needs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    [[ $(id -u) -eq 0 ]] || die "needs packages ${missing[*]}; run as root or install them"
    log "installing ${missing[*]}"
    apt_install() { apt-get -q -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "${missing[@]}" >&2; }
    if ! apt_install; then
        log "apt-get install failed; apt-get update and retry"
        apt-get -q -o DPkg::Lock::Timeout=300 update >&2 || true
        apt_install || die "apt-get install ${missing[*]} failed"
    fi
fi

# 3. prepared tree, shared by the cases of one package with the same prepare step
tag=$(printf '%s\n%s\n' "$version" "$prepare" | sha256sum | cut -c1-12)
prepared=$buildroot/prepared/$package-$tag
mkdir -p -- "$buildroot/prepared"
exec 8>"$prepared.lock"
flock -w 1800 8 || die "timed out waiting for $prepared.lock"
if [[ ! -f $prepared/.suture-prepared ]]; then
    rm -rf -- "$prepared"
    mkdir -p -- "$buildroot/prepared"
    cp -a -- "$src" "$prepared.tmp.$$"
    if [[ -n $prepare ]]; then
        log "preparing $package: $prepare"
        start=$SECONDS
        (cd "$prepared.tmp.$$" && bash -euo pipefail -c "$prepare") >"$prepared.tmp.$$.log" 2>&1 || {
            tail -n 30 "$prepared.tmp.$$.log" >&2
            die "prepare step failed for $package (log: $prepared.tmp.$$.log)"
        }
        log "prepared in $((SECONDS - start)) s"
        mv -- "$prepared.tmp.$$.log" "$prepared.tmp.$$/.suture-prepare.log"
    fi
    touch "$prepared.tmp.$$/.suture-prepared"
    mv -- "$prepared.tmp.$$" "$prepared"
fi

flock -u 8
# 4. patched copy
trees=$buildroot/cases/$case
mkdir -p -- "$buildroot/cases"
exec 7>"$trees.lock"
flock -w 1800 7 || die "timed out waiting for $trees.lock"
rm -rf -- "$trees"
mkdir -p -- "$trees"
cp -a -- "$prepared" "$trees/orig"
cp -a -- "$prepared" "$trees/patched"
patch -d "$trees/patched" -p1 --dry-run --quiet -i "$casedir/fix.diff" >/dev/null 2>&1 ||
    die "fix.diff of $case does not apply to $package $version"
patch -d "$trees/patched" -p1 --quiet --no-backup-if-mismatch -i "$casedir/fix.diff"

# 5. compile
mkdir -p -- "$outdir"
compile() { # tree out
    local tree=$1 out=$2 flags
    # Run dpkg-buildflags in the tree root: its -ffile-prefix-map maps that root to `.`.
    flags=$(cd "$tree" && echo "$(dpkg-buildflags --get CPPFLAGS) $(dpkg-buildflags --get CFLAGS)")
    # shellcheck disable=SC2086 # word splitting of flag lists is intended
    (cd "$tree/$dir" && "$cc" $flags -fcf-protection -ffunction-sections -fdata-sections $cflags \
        -c "$rel" -o "$out") ||
        die "compiling $file of $package failed"
    echo "cd <root>/$dir && $cc ${flags//$tree/<root>} -fcf-protection -ffunction-sections -fdata-sections $cflags -c $rel -o $(basename "$out")"
}
cmd=$(compile "$trees/orig" "$outdir/orig.o")
compile "$trees/patched" "$outdir/patched.o" >/dev/null
cp -- "$trees/orig/$file" "$outdir/orig.c"
cp -- "$trees/patched/$file" "$outdir/patched.c"
{
    echo "# $case: $package $version, $file"
    echo "$cmd"
} >"$outdir/compile.txt"
if cmp -s "$outdir/orig.o" "$outdir/patched.o"; then
    log "warning: orig.o and patched.o are identical"
fi
log "$case: $(stat -c %s "$outdir/orig.o") / $(stat -c %s "$outdir/patched.o") bytes in $outdir"
