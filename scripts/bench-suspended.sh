#!/usr/bin/env bash
# bench-suspended.sh [CYCLES] [SIZES_MB...]
#
# The cost of the suspended-frame scan (crates/suture-process/src/suspended.rs) in the stop
# window: a process with SIZE MB of resident, non-zero heap calls work() -> helper() in a
# loop; `suture apply` of a patch to work() is run with and without --no-suspended-scan,
# interleaved, CYCLES times per size, and the stop windows suture reports (stop_window_us)
# are summarised as medians. Uses the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
cycles=${1:-9}
shift || true
sizes=("${@:-0 64 512 2048}")
read -r -a sizes <<<"${sizes[*]}"
cargo build --release -q -p suture
suture=$PWD/target/release/suture
dir=$(mktemp -d)
trap 'pkill -P $$ 2>/dev/null || true; rm -rf "$dir"' EXIT
cat >"$dir/big.c" <<'C'
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int work(int);
__attribute__((noinline)) int helper(int x) { __asm__ volatile(""); return x + 1; }
int main(int argc, char **argv) {
    size_t mb = atoi(argv[1]);
    unsigned long *p = malloc((mb << 20) + 8);
    for (size_t i = 0; i < (mb << 20) / 8; i++) p[i] = i * 0x9e3779b97f4a7c15ul;
    printf("ready\n");
    fflush(stdout);
    for (;;) { work(1); usleep(1000); }
}
C
printf 'int helper(int);\nint work(int x) { return helper(x) * 3; }\n' >"$dir/w1.c"
printf 'int helper(int);\nint work(int x) { return helper(x) * 5; }\n' >"$dir/w2.c"
flags=(-O2 -ffunction-sections -fdata-sections)
gcc "${flags[@]}" -c "$dir/w1.c" -o "$dir/w1.o"
gcc "${flags[@]}" -c "$dir/w2.c" -o "$dir/w2.o"
gcc -O2 "$dir/big.c" "$dir/w1.o" -o "$dir/big"
"$suture" diff "$dir/w1.o" "$dir/w2.o" -o "$dir/fix.o" >/dev/null
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
window() { "$suture" apply "$dir/fix.o" --pid "$1" --json "${@:2}" |
    sed -n 's/.*"stop_window_us": \([0-9]*\).*/\1/p'; "$suture" revert fix --pid "$1" >/dev/null; }
printf '%8s %14s %14s %8s\n' "MB" "no scan (us)" "scan (us)" "ratio"
for mb in "${sizes[@]}"; do
    "$dir/big" "$mb" >"$dir/out" &
    pid=$!
    until grep -q ready "$dir/out"; do sleep 0.1; done
    : >"$dir/a"; : >"$dir/b"
    for _ in $(seq "$cycles"); do
        window "$pid" --no-suspended-scan >>"$dir/a"
        window "$pid" >>"$dir/b"
    done
    kill "$pid"; wait "$pid" 2>/dev/null || true
    a=$(median <"$dir/a"); b=$(median <"$dir/b")
    printf '%8s %14s %14s %8s\n' "$mb" "$a" "$b" "$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.1f", b / a}')"
done
