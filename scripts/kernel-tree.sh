#!/usr/bin/env bash
# Prepare a Debian bookworm kernel source tree for rebuilding single translation units.
#
#   scripts/kernel-tree.sh DIR
#
# Idempotent: when DIR/.suture-ready exists nothing is done. Otherwise the Debian packages are
# installed when missing (as root), /usr/src/linux-source-*.tar.xz is unpacked into DIR, the
# .config of the matching linux-headers-<ver>-amd64 package is copied in, and the tree is brought
# to `modules_prepare` with gcc-12 (the compiler Debian built its kernel with). Needs ~1.6 GB.
set -euo pipefail

log() { printf 'kernel-tree: %s\n' "$*" >&2; }
die() { printf 'kernel-tree: error: %s\n' "$*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 DIR"
DIR=$1
if [ -e "$DIR/.suture-ready" ]; then
    log "$DIR is ready (remove $DIR/.suture-ready to redo it)"
    exit 0
fi

JOBS=${SUTURE_KERNEL_JOBS:-2}
PACKAGES=(linux-source linux-headers-amd64 build-essential bc bison flex libelf-dev libssl-dev
          gcc-12 xz-utils patch dwarves)
TOOLS=(gcc-12 make bc bison flex xz tar patch pahole)

need_install() {
    local p t
    for t in "${TOOLS[@]}"; do command -v "$t" >/dev/null 2>&1 || return 0; done
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${db:Status-Status}\n' "$p" 2>/dev/null | grep -qx installed || return 0
    done
    # libelf-dev / libssl-dev headers are what objtool and the sign tools need.
    [ -e /usr/include/gelf.h ] && [ -e /usr/include/openssl/ssl.h ] || return 0
    return 1
}

# apt-get, waiting for the dpkg/apt locks (another process may be running apt right now) and
# retrying a few times. Usage: apt_retry ATTEMPTS ARGS...
apt_retry() {
    local n=$1 i
    shift
    for ((i = 1; i <= n; i++)); do
        if DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
               -o Acquire::Retries=3 "$@" </dev/null; then
            return 0
        fi
        [ "$i" -lt "$n" ] || break
        log "apt-get $* failed (attempt $i of $n), retrying in 15 s"
        sleep 15
    done
    return 1
}

if need_install; then
    [ "$(id -u)" -eq 0 ] || die "missing packages; as root run: apt-get install ${PACKAGES[*]}"
    log "installing packages: ${PACKAGES[*]}"
    t0=$SECONDS
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        log "no apt package lists yet: apt-get update"
        apt_retry 5 update || die "apt-get update failed"
    fi
    # A first try with the lists as they are; on failure (stale lists: 404s, missing
    # candidates) refresh them and try again.
    if ! apt_retry 1 install -y --no-install-recommends "${PACKAGES[@]}"; then
        log "install failed, running apt-get update and retrying"
        apt_retry 5 update || die "apt-get update failed"
        apt_retry 5 install -y --no-install-recommends "${PACKAGES[@]}" ||
            die "apt-get install ${PACKAGES[*]} failed"
    fi
    need_install && die "packages still missing after apt-get install"
    log "packages installed in $((SECONDS - t0)) s"
fi

# --- find the source tarball and the headers package of the same Debian version ---------------
shopt -s nullglob
tarballs=(/usr/src/linux-source-*.tar.xz)
shopt -u nullglob
[ ${#tarballs[@]} -ge 1 ] || die "no /usr/src/linux-source-*.tar.xz (is linux-source installed?)"
[ ${#tarballs[@]} -eq 1 ] || die "several source tarballs, don't know which one: ${tarballs[*]}"
TARBALL=${tarballs[0]}
srcpkg=$(dpkg-query -S "$TARBALL" 2>/dev/null | cut -d: -f1 | head -n1 || true)
[ -n "$srcpkg" ] || die "$TARBALL belongs to no installed package"
srcver=$(dpkg-query -W -f='${Version}' "$srcpkg")
log "source: $TARBALL ($srcpkg $srcver)"

# The headers package of the same Debian version, e.g. linux-headers-6.1.0-42-amd64 6.1.192-2.
HDR=
candidates=
for d in /usr/src/linux-headers-*-amd64; do
    [ -f "$d/.config" ] || continue
    hpkg=$(basename "$d")
    # only the generic flavour (not -cloud-amd64, -rt-amd64)
    [[ $hpkg =~ ^linux-headers-[0-9.]+-[0-9]+-amd64$ ]] || continue
    hver=$(dpkg-query -W -f='${Version}' "$hpkg" 2>/dev/null || true)
    candidates+=" $hpkg=$hver"
    if [ "$hver" = "$srcver" ]; then HDR=$d; fi
done
[ -n "$HDR" ] || die "no linux-headers-*-amd64 package with version $srcver (the linux-source \
version) is installed; found:${candidates:- none}. Install matching versions, e.g. \
'apt-get install linux-source=$srcver linux-headers-amd64=$srcver', or upgrade both."
log "config: $HDR/.config ($(basename "$HDR") $srcver)"

# --- unpack -------------------------------------------------------------------------------------
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
if [ ! -f "$DIR/Makefile" ] || [ ! -f "$DIR/.suture-unpacked" ]; then
    log "unpacking $TARBALL into $DIR"
    t0=$SECONDS
    # The tarball holds one top directory (linux-source-6.1/); strip it.
    tar -xJf "$TARBALL" -C "$DIR" --strip-components=1
    touch "$DIR/.suture-unpacked"
    log "unpacked in $((SECONDS - t0)) s"
else
    log "already unpacked"
fi

# Both sides must describe the same upstream release.
mkver() { awk -F' *= *' '$1=="VERSION"{v=$2} $1=="PATCHLEVEL"{p=$2} $1=="SUBLEVEL"{s=$2}
                        END{print v"."p"."s}' "$1"; }
treever=$(mkver "$DIR/Makefile")
# Debian's headers Makefile is a one-line wrapper: "include /usr/src/linux-headers-<x>-common/Makefile".
common=$HDR/Makefile
inc=$(awk '$1=="include"{print $2; exit}' "$common")
[ -n "$inc" ] && [ -f "$inc" ] && common=$inc
hdrver=$(mkver "$common")
[ "$treever" = "$hdrver" ] || die "source tree is $treever but $(basename "$HDR") is '$hdrver' (from $common)"
case "$srcver" in
    "$treever"-*) ;;
    *) die "source tree Makefile says $treever but package version is $srcver" ;;
esac
log "kernel $treever (Debian $srcver, $(basename "$HDR"))"

# --- configure and prepare ----------------------------------------------------------------------
cp "$HDR/.config" "$DIR/.config"
cd "$DIR"
t0=$SECONDS
log "make CC=gcc-12 olddefconfig"
make CC=gcc-12 olddefconfig </dev/null
log "olddefconfig took $((SECONDS - t0)) s"

t0=$SECONDS
log "make CC=gcc-12 -j$JOBS modules_prepare"
make CC=gcc-12 -j"$JOBS" modules_prepare </dev/null
log "modules_prepare took $((SECONDS - t0)) s"

printf '%s\n' "kernel=$treever" "debian=$srcver" "headers=$(basename "$HDR")" > "$DIR/.suture-ready"
log "ready: $DIR"
