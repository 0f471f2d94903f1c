#!/usr/bin/env bash
# Builds the seed corpus of the `parse_diff` fuzz target into fuzz/corpus/parse_diff (ignored by
# git): original/patched object pairs of some fixture cases, compiled the way suture expects
# (-ffunction-sections -fdata-sections), with and without -g, by gcc and clang.
# Seed format (see fuzz_targets/parse_diff.rs): 0x00 + object, or 0x01 + u32le len + orig + patched.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cases=$here/../crates/suture-object/tests/cases
out=$here/corpus/parse_diff
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

# One fixture of its own, with what the cases lack: R_X86_64_NONE, .bss/.tbss, mergeable constants.
mkdir -p "$work/extra"
cat > "$work/extra/orig.c" <<'C'
void helper(void);
static int counter;
__thread int tls_hits;
const double scale = 2.5;
int step(int x) { __asm__ volatile(".reloc ., R_X86_64_NONE, helper"); counter += x; return x * 3; }
double apply(double v) { tls_hits++; return v * scale + 1.25; }
C
sed -e 's/x \* 3/x * 5/' "$work/extra/orig.c" > "$work/extra/patched.c"

emit_seeds() { # name orig.o patched.o
  local name=$1 a=$2 b=$3
  { printf '\0'; cat "$a"; } > "$out/$name-orig"
  python3 - "$a" "$b" "$out/$name-pair" <<'PY'
import struct, sys
a = open(sys.argv[1], 'rb').read(); b = open(sys.argv[2], 'rb').read()
open(sys.argv[3], 'wb').write(b'\x01' + struct.pack('<I', len(a)) + a + b)
PY
}

n=0
for dir in "$cases/jump-table-case-changed" "$cases/cold-part-changed" \
           "$cases/string-literal-changed" "$cases/tls-references" \
           "$cases/new-static-local" "$work/extra"; do
  base=$(basename "$dir")
  for cfg in "gcc -O2" "gcc -O2 -g" "gcc -O0" "clang -O2"; do
    read -r cc opt dbg <<<"$cfg"
    tag="$base-$cc$opt${dbg:-}"
    for side in orig patched; do
      cp "$dir/$side.c" "$work/$base.c"
      $cc $opt ${dbg:-} -ffunction-sections -fdata-sections -c "$work/$base.c" \
        -o "$work/$tag-$side.o"
    done
    emit_seeds "$tag" "$work/$tag-orig.o" "$work/$tag-patched.o"
    n=$((n + 2))
  done
done
echo "wrote $n seeds to $out ($(du -sh "$out" | cut -f1))"
