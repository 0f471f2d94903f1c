#!/usr/bin/env bash
# Compile one translation unit of a tree prepared by scripts/kernel-tree.sh, the way Debian's
# build does (kbuild, gcc-12, Debian's .config, objtool included), plus
# -ffunction-sections -fdata-sections, and copy the object out.
#
#   scripts/kernel-tu.sh DIR path/to/file.c OUT.o
#
# path/to/file.c is relative to DIR (the kernel tree root). The object is always rebuilt.
# Environment:
#   SUTURE_KCFLAGS     replaces the extra flags (default: -ffunction-sections -fdata-sections)
#   SUTURE_NO_OBJTOOL  when 1, the object is taken before objtool runs (kbuild's
#                      OBJECT_FILES_NON_STANDARD=y): no .orc_unwind*, .return_sites, ...
set -euo pipefail

log() { printf 'kernel-tu: %s\n' "$*" >&2; }
die() { printf 'kernel-tu: error: %s\n' "$*" >&2; exit 1; }

[ $# -eq 3 ] || die "usage: $0 DIR path/to/file.c OUT.o"
DIR=$1 SRC=${2#./} OUT=$3
[ -e "$DIR/.suture-ready" ] || die "$DIR is not prepared: run scripts/kernel-tree.sh $DIR"
case "$SRC" in
    /*) die "give the source path relative to the tree root, not $SRC" ;;
    *.c) ;;
    *) die "$SRC is not a .c file" ;;
esac
[ -f "$DIR/$SRC" ] || die "no such file: $DIR/$SRC"

# Resolve OUT before changing directory.
outdir=$(dirname -- "$OUT")
mkdir -p -- "$outdir"
OUT=$(cd -- "$outdir" && pwd)/$(basename -- "$OUT")

OBJ=${SRC%.c}.o
KCFLAGS_EXTRA=${SUTURE_KCFLAGS--ffunction-sections -fdata-sections}
extra=()
if [ "${SUTURE_NO_OBJTOOL:-0}" = 1 ]; then extra+=(OBJECT_FILES_NON_STANDARD=y); fi

cd "$DIR"
# Force a rebuild: kbuild decides by timestamps and recorded command lines, and a case flips the
# same source back and forth (patch, patch -R) within the same second.
rm -f -- "$OBJ"
t0=$(date +%s.%N)
if ! make -s CC=gcc-12 KCFLAGS="$KCFLAGS_EXTRA" "${extra[@]}" "$OBJ" </dev/null >&2; then
    die "make $OBJ failed"
fi
[ -f "$OBJ" ] || die "make succeeded but $OBJ was not produced (is $SRC built by this config?)"
t1=$(date +%s.%N)
cp -- "$OBJ" "$OUT"

# kbuild compiles a single target even when the config does not build it (then as built-in
# code). Best effort: look for a direct `obj-$(CONFIG_X) += file.o` line and check CONFIG_X.
kind=built-in
grep -q -- '-DMODULE' "$(dirname "$OBJ")/.$(basename "$OBJ").cmd" 2>/dev/null && kind=module
base=$(basename "$OBJ")
for mk in "$(dirname "$SRC")/Makefile" "$(dirname "$SRC")/Kbuild"; do
    [ -f "$mk" ] || continue
    sym=$(sed -n "s/^[[:space:]]*obj-\$(\(CONFIG_[A-Za-z0-9_]*\))[[:space:]]*[+:]=.*[[:space:]]${base//./\\.}\([[:space:]].*\)\{0,1\}\$/\1/p" "$mk" | head -n1)
    if [ -n "$sym" ] && ! grep -Eq "^$sym=(y|m)\$" .config; then
        log "WARNING: $mk builds $base only with $sym, which this .config does not set: the object is not part of Debian's kernel"
        kind="$kind, NOT in this config"
    fi
done
log "$SRC -> $OUT ($kind, $(stat -c %s "$OUT") bytes, $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s)"
