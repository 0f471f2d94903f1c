#!/usr/bin/env bash
# Benchmark of the booted-guest tier: QEMU (TCG) boot of Debian's stock kernel to /init, and
# `suture kernel load` / `unload` of a small livepatch module on the idle guest (medians).
#
#   scripts/bench-kernel-guest.sh [BOOTS]      (default 5 boots x 5 load/unload cycles)
#
# Needs what scripts/test.sh prepares (QEMU, busybox-static, the guest kernel cache).
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${SUTURE_CACHE:-/var/tmp/suture}
bash scripts/guest-kernel.sh "$cache/guest"
export SUTURE_GUEST_CACHE="$cache/guest" SUTURE_BENCH_BOOTS=${1:-5}
cargo test -p suture --test kernel_guest -- --ignored --exact guest_benchmark --nocapture
