#!/usr/bin/env bash
# real-fixes.sh CACHE
#
# Prepares the trees of the real-fixes tier (tests in crates/suture/tests/real_fixes.rs) under
# CACHE/real-fixes: Debian 12 source packages whose debian/patches carry CVE fixes, each as
# the tree Debian built before the security update, built, with a small driver program that
# runs the fixed code path in a loop.
#
# Per package PKG (today: expat, libpng1.6, giflib, c-ares):
#   PKG/vuln-src/     Debian's source package (`apt-get source`), the CVE patches unapplied
#                     (quilt pop) and dropped from the series: the tree before the update,
#                     unbuilt (what `suture build --source` gets a copy of)
#   PKG/vuln/         vuln-src built with build-cmd.txt (the deployed library)
#   PKG/build-cmd.txt the build command (configure once, then the library only)
#   PKG/lib.txt       the built library's path, relative to vuln/
#   PKG/patches/      the CVE patches, as Debian ships them (-p1 from the source root)
#   PKG/probe         the driver (scripts/real-fixes/PKG-probe.c) linked against vuln/'s library
#                     (rpath): prints one line per iteration of the fixed code path
#   build-times.txt   seconds each build took
#   .ready            written last; a second call returns at once when it exists
#
# expat: built with its own autotools build (buildconf.sh, configure), which compiles the
# library with -fvisibility=hidden (only XMLPARSEAPI functions exported).
#
# Environment:
#   SUTURE_DEBIAN_SRC  where unpacked sources are kept (default CACHE/debian-src)
set -euo pipefail
exec </dev/null

me=${0##*/}
die() { echo "$me: error: $*" >&2; exit 1; }
log() { echo "$me: $*" >&2; }

[[ $# -eq 1 ]] || die "usage: $me CACHE"
here=$(cd "$(dirname "$0")" && pwd)
cache=$(realpath -m -- "$1")
out=$cache/real-fixes
srcroot=${SUTURE_DEBIAN_SRC:-$cache/debian-src}

mkdir -p -- "$out"
exec 9>"$out.lock"
flock -w 3600 9 || die "timed out waiting for $out.lock"
format=11
[[ -f $out/.ready ]] && grep -qx "format: $format" "$out/.ready" && exit 0
rm -f -- "$out/.ready"

needs=(dpkg-dev quilt gcc make patch autoconf automake libtool bc)
missing=()
for p in "${needs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    [[ $(id -u) -eq 0 ]] || die "needs packages ${missing[*]}; run as root or install them"
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 install -y \
        --no-install-recommends "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
fi
touch "$out/build-times.txt"

# vuln PKG BUILD-CMD LIB: PKG/vuln-src (CVE patches dropped), PKG/vuln (built), PKG/patches
vuln() {
    local pkg=$1 build_cmd=$2 lib=$3 d=$out/$1 src=$srcroot/$1 u t p start
    u=$d/vuln-src
    t=$d/vuln
    mkdir -p -- "$d"
    echo "$build_cmd" >"$d/build-cmd.txt"
    echo "$lib" >"$d/lib.txt"
    [[ -f $t/.suture-built ]] && return 0
    "$here/debian-source.sh" "$pkg" "$src"
    rm -rf -- "$u" "$u.tmp" "$t" "$d/patches"
    mkdir -p -- "$d/patches"
    cp -a -- "$src" "$u.tmp"
    (cd "$u.tmp" && QUILT_PATCHES=debian/patches quilt pop -a -q) >"$d/vuln.log" 2>&1 ||
        die "quilt pop failed in $u.tmp (log: $d/vuln.log)"
    while read -r p _; do
        [[ -z $p || $p == \#* ]] && continue
        if grep -qE 'CVE-[0-9]{4}-[0-9]{4,}' <<<"$p"; then
            cp -- "$u.tmp/debian/patches/$p" "$d/patches/$p"
            grep -vxF -- "$p" "$u.tmp/debian/patches/series" >"$u.tmp/series.tmp" || true
            mv -- "$u.tmp/series.tmp" "$u.tmp/debian/patches/series"
        fi
    done <"$u.tmp/debian/patches/series"
    (cd "$u.tmp" && QUILT_PATCHES=debian/patches quilt push -a -q) >>"$d/vuln.log" 2>&1 ||
        die "quilt push failed in $u.tmp (log: $d/vuln.log)"
    rm -rf -- "$u.tmp/.pc"
    mv -- "$u.tmp" "$u"
    cp -a -- "$u" "$t"
    log "building $pkg ($build_cmd)"
    start=$(date +%s.%N)
    (cd "$t" && sh -c "$build_cmd") >>"$d/vuln.log" 2>&1 || {
        tail -n 30 "$d/vuln.log" >&2
        die "build of $pkg failed (log: $d/vuln.log)"
    }
    [[ -f $t/$lib ]] || die "build of $pkg made no $lib"
    echo "$pkg $(echo "$(date +%s.%N) - $start" | bc -l | xargs printf '%.1f')" >>"$out/build-times.txt"
    touch "$t/.suture-built"
}

# probe PKG INCLUDE-DIR LIB-DIR LIB: PKG/probe from scripts/real-fixes/PKG-probe.c
probe() {
    local pkg=$1 d=$out/$1
    gcc -O2 -g -Wall -Werror -I"$d/vuln/$2" -o "$d/probe.tmp" "$here/real-fixes/$pkg-probe.c" \
        -L"$d/vuln/$3" -l"$4" -Wl,-rpath,"$d/vuln/$3" || die "cannot build the $pkg probe"
    mv -- "$d/probe.tmp" "$d/probe"
}

# Debian's expat build runs configure from a separate directory; here the tree's own
# buildconf.sh + configure in expat/, tools, examples and tests off, and make of lib/ only.
vuln expat 'cd expat && { test -f Makefile || { ./buildconf.sh && ./configure --without-docbook --without-examples --without-tests --without-xmlwf CFLAGS="-g -O2"; }; } && make -j"$(nproc)" -C lib' \
    expat/lib/.libs/libexpat.so.1.8.10
probe expat expat/lib expat/lib/.libs expat

# libpng1.6: the release tarball's configure (zlib from the system), make of the library only.
vuln libpng1.6 '{ test -f Makefile || ./configure --disable-static CFLAGS="-g -O2"; } && make -j"$(nproc)" libpng16.la' \
    .libs/libpng16.so.16.39.0
probe libpng1.6 . .libs png16

# giflib: its own Makefile, the shared library only.
vuln giflib 'make -j"$(nproc)" OFLAGS="-O2 -g" libgif.so.7.2.0' libgif.so.7.2.0
ln -sf libgif.so.7.2.0 "$out/giflib/vuln/libgif.so"
ln -sf libgif.so.7.2.0 "$out/giflib/vuln/libgif.so.7"
probe giflib . . gif

# c-ares: the release tarball's configure (symbol hiding on: -fvisibility=hidden), make of the
# library only.
vuln c-ares '{ test -f Makefile || ./configure --disable-tests CFLAGS="-g -O2"; } && make -j"$(nproc)" -C src/lib' \
    src/lib/.libs/libcares.so.2.5.1
probe c-ares include src/lib/.libs cares

{
    echo "format: $format"
    echo "packages: expat libpng1.6 giflib c-ares"
} >"$out/.ready"
log "ready: $out"
