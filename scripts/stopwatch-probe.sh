# Sourced by the stop-window benchmarks (bench-stop.sh, bench-cli.sh).
# build_probe DIR EXTRA_FUNCTIONS: the stopwatch probe (from $src) with EXTRA_FUNCTIONS more
# functions, and its patch (version() returns 2, every extra function adds 1 more), in DIR:
# DIR/stopwatch and DIR/patch.o, made with $suture. The probe's version() cannot be hoisted
# out of its loop, so every applied patch shows as v=2.
build_probe() {
    local d=$1 n=$2
    mkdir -p "$d/orig" "$d/fixed"
    cp "$src" "$d/orig/stopwatch.c"
    for i in $(seq 0 $((n - 1))); do
        echo "__attribute__((noinline)) int extra$i(int x) { return x + $i; }" >> "$d/orig/stopwatch.c"
    done
    sed -e 's/^\treturn 1;$/\treturn 2;/' -e 's/return x + \([0-9]*\); }/return x + \1 + 1; }/' \
        "$d/orig/stopwatch.c" > "$d/fixed/stopwatch.c"
    cmp -s "$d/orig/stopwatch.c" "$d/fixed/stopwatch.c" && { echo "the fix changed nothing" >&2; exit 1; }
    for side in orig fixed; do
        (cd "$d/$side" && gcc -c -O2 -g -ffunction-sections -fdata-sections stopwatch.c -o stopwatch.o)
    done
    gcc -pthread "$d/orig/stopwatch.o" -o "$d/stopwatch"
    "$suture" diff "$d/orig/stopwatch.o" "$d/fixed/stopwatch.o" -o "$d/patch.o" >/dev/null
}
