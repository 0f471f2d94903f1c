#!/usr/bin/env bash
# Build the two objects of one kernel fixture case (crates/suture-object/tests/kernel/<case>/):
# the translation unit named by `file:` in case.txt as shipped, then with fix.diff applied.
# The fix is always reverted afterwards (also on failure), so the tree stays pristine.
#
#   scripts/kernel-case.sh DIR CASE_DIR OUT_DIR      -> OUT_DIR/orig.o OUT_DIR/patched.o
set -euo pipefail

log() { printf 'kernel-case: %s\n' "$*" >&2; }
die() { printf 'kernel-case: error: %s\n' "$*" >&2; exit 1; }

[ $# -eq 3 ] || die "usage: $0 DIR CASE_DIR OUT_DIR"
DIR=$(cd "$1" && pwd)
CASE=$(cd "$2" && pwd)
mkdir -p "$3"
OUT=$(cd "$3" && pwd)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

[ -f "$CASE/case.txt" ] || die "no $CASE/case.txt"
[ -f "$CASE/fix.diff" ] || die "no $CASE/fix.diff"
FILE=$(sed -n 's/^file:[[:space:]]*//p' "$CASE/case.txt" | head -n1 | tr -d '[:space:]')
[ -n "$FILE" ] || die "$CASE/case.txt has no 'file:' line"

# The diff must touch exactly the one file the case names.
touched=$(sed -n 's/^+++ b\/\([^[:space:]]*\).*/\1/p' "$CASE/fix.diff" | sort -u)
[ "$touched" = "$FILE" ] || die "fix.diff touches '$touched', case.txt says '$FILE'"

cd "$DIR"
patch -p1 --dry-run -s -f --no-backup-if-mismatch -r - < "$CASE/fix.diff" >/dev/null ||
    die "fix.diff does not apply to $DIR (is the tree pristine? is another case applied?)"

"$HERE/kernel-tu.sh" "$DIR" "$FILE" "$OUT/orig.o"

applied=0
revert() {
    if [ "$applied" = 1 ]; then
        patch -p1 -R -s -f --no-backup-if-mismatch -r - < "$CASE/fix.diff" >/dev/null || log "WARNING: could not revert $CASE/fix.diff in $DIR"
        applied=0
    fi
}
trap revert EXIT
patch -p1 -s -f --no-backup-if-mismatch -r - < "$CASE/fix.diff" >/dev/null
applied=1
"$HERE/kernel-tu.sh" "$DIR" "$FILE" "$OUT/patched.o"
revert
trap - EXIT
# Leave the tree's object as built from pristine source again (cheap, keeps later builds honest).
rm -f -- "${FILE%.c}.o"
log "$(basename "$CASE"): $OUT/orig.o $OUT/patched.o"
