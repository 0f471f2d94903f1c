#!/usr/bin/env bash
# Prepare the consecutive Debian 12 kernel releases of the real kernel-fixes tier
# (crates/suture/tests/kernel_real_fixes.rs).
#
#   scripts/kernel-releases.sh CACHE
#
# For each release R in RELEASES: CACHE/kernel-tree-R, that release's exact source tree with
# its own headers (scripts/kernel-tree.sh --release R), and, for every release but the newest,
# CACHE/guest/R-amd64, its stock image and modules (scripts/guest-kernel.sh). A fix of the tier
# is the difference between one release's tree and the next one's, in the files the next
# release's changelog entry touched; the live patch is built from the older tree and loaded
# into the older image. Nothing is installed on the host beyond the build tools.
#
# Idempotent; ~1.6 GB per tree and ~400 MB per image. The releases stay in bookworm-security
# while Debian keeps them; when one is withdrawn, this script fails naming it.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'kernel-releases: %s\n' "$*" >&2; }

[ $# -eq 1 ] || { echo "usage: $0 CACHE" >&2; exit 2; }
CACHE=$1
mkdir -p "$CACHE"

# 6.1.0-54: 6.1.190-1; -55: 6.1.192-1 (stable 6.1.191 and 6.1.192); -56: 6.1.192-2 (one ext4
# fix); -57: 6.1.192-3 (one nfsd fix).
RELEASES=(6.1.0-54 6.1.0-55 6.1.0-56 6.1.0-57)
newest=${RELEASES[${#RELEASES[@]}-1]}
for r in "${RELEASES[@]}"; do
    log "tree of $r"
    bash scripts/kernel-tree.sh --release "$r" "$CACHE/kernel-tree-$r" >"$CACHE/kernel-tree-$r.log" 2>&1 ||
        { tail -n 20 "$CACHE/kernel-tree-$r.log" >&2; log "error: preparing the tree of $r failed"; exit 1; }
    if [ "$r" != "$newest" ]; then
        log "image of $r"
        bash scripts/guest-kernel.sh "$CACHE/guest" "$r-amd64"
    fi
done
log "ready: ${RELEASES[*]}"
