#!/usr/bin/env bash
# Prepare the consecutive Debian kernel releases of the real kernel-fixes tier
# (crates/suture/tests/kernel_real_fixes.rs).
#
#   scripts/kernel-releases.sh CACHE            Debian 12's 6.1 (SUTURE_KERNEL_RELEASES=CACHE)
#   scripts/kernel-releases.sh --trixie CACHE   Debian 13's 6.12 (SUTURE_KERNEL_RELEASES_6_12=CACHE)
#
# For each release R in RELEASES: CACHE/kernel-tree-R, that release's exact source tree with
# its own headers (scripts/kernel-tree.sh --release R), and, for every release but the newest,
# CACHE/guest/R-amd64, its stock image and modules (scripts/guest-kernel.sh). A fix of the tier
# is the difference between one release's tree and the next one's, in the files the next
# release's changelog entry touched; the live patch is built from the older tree and loaded
# into the older image. Nothing is installed on the host beyond the build tools.
#
# --trixie: 6.12 is built with trixie's gcc-14 and its kbuild tools need trixie's glibc, which a
# bookworm host cannot install. So CACHE/trixie-root is a trixie root file system made with
# debootstrap (minbase plus the kernel build tools), apt and the compiler run in it
# (kernel-tree.sh --chroot), the trees live inside it (CACHE/kernel-tree-R is a symbolic link
# to CACHE/trixie-root/var/cache/suture/kernel-tree-R) and the tier runs `suture build --kernel`
# there. Needs debootstrap on the host (installed when missing, as root).
#
# Idempotent; ~1.6 GB (6.1) or ~1.8 GB (6.12) per tree, ~400-500 MB per image, ~500 MB for the
# chroot. The releases stay in bookworm-security / trixie-security while Debian keeps them; when
# one is withdrawn, this script fails naming it.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'kernel-releases: %s\n' "$*" >&2; }

TRIXIE=
if [ "${1:-}" = --trixie ]; then TRIXIE=1; shift; fi
[ $# -eq 1 ] || { echo "usage: $0 [--trixie] CACHE" >&2; exit 2; }
CACHE=$1
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)

if [ -n "$TRIXIE" ]; then
    ROOT=$CACHE/trixie-root
    if [ ! -e "$ROOT/.suture-ready" ]; then
        command -v debootstrap >/dev/null ||
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null ||
            { log "error: debootstrap is missing and cannot be installed"; exit 1; }
        log "trixie root file system in $ROOT (debootstrap)"
        t0=$SECONDS
        rm -rf "$ROOT"
        debootstrap --variant=minbase \
            --include=gcc,gcc-14,make,bc,bison,flex,libelf-dev,libssl-dev,dwarves,python3,xz-utils,kmod,patch,cpio,rsync \
            trixie "$ROOT" http://deb.debian.org/debian >"$CACHE/trixie-root.log" 2>&1 ||
            { tail -n 20 "$CACHE/trixie-root.log" >&2; log "error: debootstrap failed"; exit 1; }
        # The kernel releases after the first of trixie come through trixie-security.
        printf '%s\n' "deb http://deb.debian.org/debian trixie main" \
            "deb http://deb.debian.org/debian trixie-updates main" \
            "deb http://security.debian.org/debian-security trixie-security main" \
            >"$ROOT/etc/apt/sources.list"
        chroot "$ROOT" apt-get update -q >>"$CACHE/trixie-root.log" 2>&1 ||
            { log "error: apt-get update in $ROOT failed"; exit 1; }
        chroot "$ROOT" apt-get clean
        touch "$ROOT/.suture-ready"
        log "trixie root ready in $((SECONDS - t0)) s"
    else
        # Fresh lists: the security suite moves on.
        chroot "$ROOT" apt-get update -q >/dev/null 2>&1 || log "warning: apt-get update in $ROOT failed"
    fi
    # 6.12.115+deb13: 6.12.115-1; 6.12.116+deb13: 6.12.116-1 (xen-netback, xen-blkback and
    # snd-usb-audio fixes); 6.12.117+deb13: 6.12.117-1 (stable 6.12.117).
    RELEASES=(6.12.115+deb13 6.12.116+deb13 6.12.117+deb13)
    newest=${RELEASES[${#RELEASES[@]}-1]}
    for r in "${RELEASES[@]}"; do
        log "tree of $r (in $ROOT)"
        inside=$ROOT/var/cache/suture/kernel-tree-$r
        mkdir -p "$ROOT/var/cache/suture"
        bash scripts/kernel-tree.sh --chroot "$ROOT" --release "$r" "$inside" >"$CACHE/kernel-tree-$r.log" 2>&1 ||
            { tail -n 20 "$CACHE/kernel-tree-$r.log" >&2; log "error: preparing the tree of $r failed"; exit 1; }
        ln -sfn "$inside" "$CACHE/kernel-tree-$r"
        if [ "$r" != "$newest" ]; then
            log "image of $r"
            bash scripts/guest-kernel.sh --chroot "$ROOT" "$CACHE/guest" "$r-amd64"
        fi
    done
    log "ready: ${RELEASES[*]}"
    exit 0
fi

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
