#!/usr/bin/env bash
# bench-objects.sh OUTDIR
#
# Benchmark inputs for the differ: three orig/patched object pairs, each with a one-function
# change (crates/suture-object/tests/real/bench/*.diff), built from Debian source packages with
# Debian's flags plus -fcf-protection -ffunction-sections -fdata-sections -fPIC (all three are
# library code):
#   OUTDIR/small/{orig,patched}.o   zlib crc32.c          (~50 KB, crc32_combine64 changes)
#   OUTDIR/medium/{orig,patched}.o  lz4 lib/lz4hc.c       (~650 KB, LZ4_saveDictHC changes)
#   OUTDIR/large/{orig,patched}.o   SQLite's amalgamation (~9 MB, charFunc changes), with
#                                   Debian's SQLITE_* defines from debian/rules
# sqlite3.c is generated from Debian's sqlite3 source (`configure && make sqlite3.c`, needs
# tclsh) and cached. Prints each object's size, section count and function count.
#
# Environment:
#   SUTURE_DEBIAN_SRC   where unpacked sources are kept   (default /work/debian-src)
#   SUTURE_BENCH_CACHE  build trees and sqlite3.c cache    (default /tmp/suture-bench)
#   CC                  compiler                           (default gcc)
set -euo pipefail
exec </dev/null

me=${0##*/}
die() { echo "$me: error: $*" >&2; exit 1; }
log() { echo "$me: $*" >&2; }

[[ $# -eq 1 ]] || die "usage: $me OUTDIR"
here=$(cd "$(dirname "$0")" && pwd)
diffs=$here/../crates/suture-object/tests/real/bench
out=$(realpath -m -- "$1")
srcroot=${SUTURE_DEBIAN_SRC:-/work/debian-src}
cache=${SUTURE_BENCH_CACHE:-/tmp/suture-bench}
cc=${CC:-gcc}
for d in small-zlib-crc32 medium-lz4hc large-sqlite3; do
    [[ -f $diffs/$d.diff ]] || die "$diffs/$d.diff not found"
done
command -v "$cc" >/dev/null || die "compiler '$cc' not found"
command -v readelf >/dev/null || die "readelf not found (binutils)"
if ! command -v tclsh >/dev/null; then
    [[ $(id -u) -eq 0 ]] || die "tclsh is needed to generate sqlite3.c (package tcl)"
    log "installing tcl (for sqlite3.c generation)"
    apt-get -q -o DPkg::Lock::Timeout=300 install -y --no-install-recommends tcl >&2 ||
        die "apt-get install tcl failed"
fi

for p in zlib lz4 sqlite3; do
    "$here/debian-source.sh" "$p" "$srcroot/$p"
done
version() { sed -n 's/^version: *//p' "$srcroot/$1/.suture-source.stamp"; }

# --- SQLite amalgamation ---------------------------------------------------------------------
amalg=$cache/sqlite3-amalgamation-$(version sqlite3)
if [[ ! -f $amalg/sqlite3.c ]]; then
    log "generating sqlite3.c from Debian's sqlite3 $(version sqlite3)"
    start=$SECONDS
    rm -rf -- "$amalg.build"
    mkdir -p -- "$amalg.build"
    (cd "$amalg.build" && "$srcroot/sqlite3/configure" --disable-tcl >configure.log 2>&1 &&
        make sqlite3.c >make.log 2>&1) || {
        tail -n 30 "$amalg.build"/*.log >&2
        die "generating sqlite3.c failed (logs in $amalg.build)"
    }
    mkdir -p -- "$amalg.tmp"
    cp -- "$amalg.build/sqlite3.c" "$amalg.build/sqlite3.h" "$amalg.build/sqlite3ext.h" "$amalg.tmp/"
    rm -rf -- "$amalg" && mv -- "$amalg.tmp" "$amalg" && rm -rf -- "$amalg.build"
    log "sqlite3.c generated in $((SECONDS - start)) s"
fi

# --- build -----------------------------------------------------------------------------------
# build NAME TREE FILE DIFF CFLAGS...: copies TREE twice, applies DIFF (-p1) to one copy and
# compiles FILE in both, in the copy's root (dpkg-buildflags' -ffile-prefix-map maps it to .).
build() {
    local name=$1 tree=$2 file=$3 diff=$4
    shift 4
    local work=$cache/work/$name dest=$out/$name side flags start=$SECONDS
    rm -rf -- "$work"
    mkdir -p -- "$work" "$dest"
    cp -a -- "$tree" "$work/orig"
    cp -a -- "$tree" "$work/patched"
    patch -d "$work/patched" -p1 --quiet --no-backup-if-mismatch -i "$diff" ||
        die "$(basename "$diff") does not apply to $tree"
    # The two sides compile in parallel (2 jobs: the machines have 2 cores).
    local pids=()
    for side in orig patched; do
        flags=$(cd "$work/$side" && echo "$(dpkg-buildflags --get CPPFLAGS) $(dpkg-buildflags --get CFLAGS)")
        # shellcheck disable=SC2086 # word splitting of the flag list is intended
        (cd "$work/$side" && exec "$cc" $flags -fcf-protection -ffunction-sections -fdata-sections \
            -fPIC "$@" -c "$file" -o "$dest/$side.o") &
        pids+=($!)
    done
    wait "${pids[0]}" || die "compiling $name (orig) failed"
    wait "${pids[1]}" || die "compiling $name (patched) failed"
    cmp -s "$dest/orig.o" "$dest/patched.o" && die "$name: orig.o and patched.o are identical"
    rm -rf -- "$work"
    log "$name built in $((SECONDS - start)) s"
}

build small "$srcroot/zlib" crc32.c "$diffs/small-zlib-crc32.diff" \
    -D_REENTRANT -DUNALIGNED_OK -D_LARGEFILE64_SOURCE=1 -DHAVE_HIDDEN -DPIC
build medium "$srcroot/lz4" lib/lz4hc.c "$diffs/medium-lz4hc.diff" \
    -DLZ4F_PUBLISH_STATIC_FUNCTIONS -DXXH_NAMESPACE=LZ4_ -fvisibility=hidden
# Debian's debian/rules CFLAGS, plus what its configure --enable-fts4 --enable-fts5 adds.
build large "$amalg" sqlite3.c "$diffs/large-sqlite3.diff" \
    -fno-strict-aliasing -DSQLITE_SECURE_DELETE -DSQLITE_ENABLE_COLUMN_METADATA \
    -DSQLITE_ENABLE_FTS3 -DSQLITE_ENABLE_FTS3_PARENTHESIS -DSQLITE_ENABLE_RTREE=1 \
    -DSQLITE_SOUNDEX=1 -DSQLITE_ENABLE_UNLOCK_NOTIFY -DSQLITE_OMIT_LOOKASIDE=1 \
    -DSQLITE_ENABLE_DBSTAT_VTAB -DSQLITE_ALLOW_ROWID_IN_VIEW -DSQLITE_ENABLE_UPDATE_DELETE_LIMIT=1 \
    -DSQLITE_ENABLE_LOAD_EXTENSION -DSQLITE_ENABLE_JSON1 -DSQLITE_LIKE_DOESNT_MATCH_BLOBS \
    -DSQLITE_THREADSAFE=1 -DSQLITE_ENABLE_FTS3_TOKENIZER=1 -DSQLITE_USE_URI=1 \
    -DSQLITE_MAX_SCHEMA_RETRY=25 -DSQLITE_ENABLE_PREUPDATE_HOOK -DSQLITE_ENABLE_SESSION \
    -DSQLITE_ENABLE_STMTVTAB -DSQLITE_MAX_VARIABLE_NUMBER=250000 \
    -DSQLITE_ENABLE_FTS4 -DSQLITE_ENABLE_FTS5

# --- report ----------------------------------------------------------------------------------
printf '%-8s %-9s %12s %9s %10s %12s\n' set side bytes sections functions text-bytes
for name in small medium large; do
    for side in orig patched; do
        o=$out/$name/$side.o
        nsec=$(readelf -h "$o" | sed -n 's/.*Number of section headers: *//p')
        nfunc=$(readelf -sW "$o" | awk '$4 == "FUNC" && $7 != "UND"' | wc -l)
        text=0
        for hex in $(readelf -SW "$o" | awk '{sub(/^ *\[ *[0-9]+\] */, "")} $1 ~ /^\.text/ {print $5}'); do
            text=$((text + 16#$hex))
        done
        printf '%-8s %-9s %12d %9d %10d %12d\n' "$name" "$side" "$(stat -c %s "$o")" "$nsec" "$nfunc" "$text"
    done
done
