#!/usr/bin/env bash
# Differ benchmark: time and peak memory of parse + diff + emit at three object sizes (zlib
# crc32.c, lz4 lz4hc.c, SQLite's amalgamation; see scripts/bench-objects.sh), plus a Linux
# kernel translation unit comparable to the reference figure (net/ipv4/tcp.c, built by the
# kernel test tier) when one is found. Prints a Markdown table; each row is a fresh process.
#
#   scripts/bench-diff.sh [OBJDIR] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
objs=${1:-${SUTURE_CACHE:-/var/tmp/suture}/bench-objs}
runs=${2:-21}
[ -f "$objs/large/patched.o" ] || bash scripts/bench-objects.sh "$objs" >&2
cargo build --release -q -p suture-object --example bench_diff
bench=target/release/examples/bench_diff

rows=("small:$objs/small" "medium:$objs/medium" "large:$objs/large")
kernel=$(find target -path '*kernel/tcp-window-clamp-*' -name patched.o -printf '%h\n' 2>/dev/null | head -n1 || true)
[ -n "$kernel" ] && rows+=("kernel tcp.c:$kernel")

echo "| input | object | sections | min ms | median ms | p90 ms | peak RSS | changed |"
echo "|---|---|---|---|---|---|---|---|"
for row in "${rows[@]}"; do
    name=${row%%:*} dir=${row#*:}
    json=$("$bench" "$dir/orig.o" "$dir/patched.o" "$runs")
    python3 - "$name" "$json" <<'PY'
import json, sys
name, j = sys.argv[1], json.loads(sys.argv[2])
print(f"| {name} | {j['object_bytes']/1e6:.2f} MB | {j['sections']} | {j['min_ms']:.2f} | "
      f"{j['median_ms']:.2f} | {j['p90_ms']:.2f} | {j['peak_rss_kib']/1024:.1f} MiB | {j['changed']} |")
PY
done
