#!/usr/bin/env bash
# Prepare a Debian bookworm kernel source tree for rebuilding single translation units.
#
#   scripts/kernel-tree.sh DIR
#   scripts/kernel-tree.sh --release 6.1.0-N[-amd64] DIR
#   scripts/kernel-tree.sh --chroot ROOT --release 6.12.P+deb13[.M][-amd64] DIR
#   scripts/kernel-tree.sh --help
#
# Without --release: the Debian packages are installed when missing (as root),
# /usr/src/linux-source-*.tar.xz is unpacked into DIR, the .config of the installed
# linux-headers-<ver>-amd64 package of the same version is copied in, and the tree is brought to
# `modules_prepare` with gcc-12 (the compiler Debian built its kernel with).
#
# With --release 6.1.0-N: the exact tree of that Debian kernel release, side by side with others.
# The version V of linux-headers-6.1.0-N-amd64 (the version of linux-image-6.1.0-N-amd64 too) is
# looked up with apt-cache; linux-source-6.1=V, linux-headers-6.1.0-N-amd64=V,
# linux-headers-6.1.0-N-common=V and linux-kbuild-6.1 (the archive's, which the headers accept:
# they depend on ">= V") are fetched with `apt-get download` and unpacked with `dpkg-deb -x` --
# nothing is installed on the host. The headers go to DIR/.suture-headers/ (their Makefile and
# links point into it), the tree gets that release's .config and Module.symvers, and
# DIR/.suture-ready names the headers directory, so `suture build --kernel --source DIR` finds
# them. The tools (make, gcc-12, ...) must be installed (the no-argument form installs them).
#
# Debian 13's 6.12 releases are named 6.12.P+deb13[.M] (linux-headers-6.12.115+deb13-amd64) and
# their kbuild tools come per release (linux-kbuild-6.12.115+deb13, the one of the same version).
#
# --chroot ROOT: the release's compiler (and its kbuild tools, linked against its glibc) only run
# on that Debian release, e.g. 6.12 needs trixie's gcc-14 on a bookworm host. ROOT is a root file
# system of that release (`debootstrap --variant=minbase trixie ROOT`, with make gcc-14 bc bison
# flex libelf-dev libssl-dev dwarves python3 xz-utils patch gcc: scripts/kernel-releases.sh makes
# it). DIR must lie inside ROOT; apt, make and the compiler run under `chroot ROOT`, and
# DIR/.suture-ready names paths as seen inside ROOT, so `suture build --kernel` must run there too
# (a bookworm-built suture runs on trixie). Nothing is mounted: the tree needs no /proc or /dev.
#
# Idempotent: when DIR/.suture-ready exists nothing is done. Needs ~1.6 GB per tree.
set -euo pipefail

log() { printf 'kernel-tree: %s\n' "$*" >&2; }
die() { printf 'kernel-tree: error: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^$/s/^# \{0,1\}//p' "$0" | sed '$d'; }
RELEASE=
ROOT=
while [ $# -gt 0 ]; do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --release)
            [ $# -ge 2 ] || die "--release needs a value, e.g. --release 6.1.0-56"
            RELEASE=$2
            shift 2
            ;;
        --release=*) RELEASE=${1#--release=}; shift ;;
        --chroot)
            [ $# -ge 2 ] || die "--chroot needs a directory"
            ROOT=$(cd "$2" && pwd) || die "no directory $2"
            shift 2
            ;;
        --) shift; break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) break ;;
    esac
done
[ $# -eq 1 ] || die "usage: $0 [--release 6.1.0-N] DIR (see --help)"
DIR=$1
if [ -n "$RELEASE" ]; then
    RELEASE=${RELEASE%-amd64}
    [[ $RELEASE =~ ^[0-9]+\.[0-9]+\.[0-9]+-[0-9]+$ || $RELEASE =~ ^[0-9]+\.[0-9]+\.[0-9]+\+deb[0-9]+(\.[0-9]+)?$ ]] ||
        die "--release '$RELEASE' is not a Debian kernel ABI release like 6.1.0-56 or 6.12.115+deb13"
    SERIES=$(echo "$RELEASE" | cut -d. -f1,2)
fi
# Commands that must run on the release's own system (apt, make, the compiler): in ROOT when given.
# `in_root` runs its arguments there, in the current directory when it lies inside ROOT (else in /).
in_root() {
    if [ -z "$ROOT" ]; then "$@"; return; fi
    local here
    here=$(pwd)
    case $here/ in "$ROOT"/*) ;; *) here=$ROOT ;; esac
    chroot "$ROOT" sh -c 'cd "$1" && shift && exec "$@"' sh "$(inner "$here")" "$@"
}
# A path inside ROOT as the chroot sees it.
inner() { if [ -n "$ROOT" ]; then local p=${1#"$ROOT"}; echo "${p:-/}"; else echo "$1"; fi; }
if [ -e "$DIR/.suture-ready" ]; then
    log "$DIR is ready (remove $DIR/.suture-ready to redo it)"
    exit 0
fi

JOBS=${SUTURE_KERNEL_JOBS:-2}
PACKAGES=(build-essential bc bison flex libelf-dev libssl-dev gcc-12 xz-utils patch dwarves)
# Without --release the tree is the installed linux-source's, configured by the installed headers;
# with --release both are fetched (and never installed).
[ -n "$RELEASE" ] || PACKAGES=(linux-source linux-headers-amd64 "${PACKAGES[@]}")
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

if [ -n "$ROOT" ]; then
    for t in "${TOOLS[@]/gcc-12/}"; do
        [ -z "$t" ] || chroot "$ROOT" sh -c "command -v $t" >/dev/null ||
            die "$ROOT has no $t (see --help for the packages the chroot needs)"
    done
elif need_install; then
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

# --- the source tarball and the headers package of the same Debian version --------------------
installed_tree() {
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
    local candidates= d hpkg hver
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
'apt-get install linux-source=$srcver linux-headers-amd64=$srcver', or upgrade both; or use \
--release 6.1.0-N to fetch one release's source and headers."
}

# `apt-get download PKG` into the current directory unless a .deb of it is already there.
fetch() {
    local pkg=${1%%=*} i
    compgen -G "${pkg}_*.deb" >/dev/null && return 0
    for i in 1 2 3; do
        if in_root apt-get download -q "$1" >/dev/null 2>apt.err; then return 0; fi
        log "apt-get download $1 failed (attempt $i of 3): $(tail -n1 apt.err)"
        sleep 2
    done
    die "cannot download $1 (is it still in the archive? apt-get update may help)"
}

# Version of a package in the apt lists (the candidate), empty when apt does not know it.
archive_version() {
    { in_root apt-cache show --no-all-versions "$1" 2>/dev/null || true; } | sed -n 's/^Version: //p' | head -n1
}

release_tree() {
    local hpkg=linux-headers-$RELEASE-amd64 cpkg=linux-headers-$RELEASE-common
    local img=linux-image-$RELEASE-amd64 imgver known
    srcver=$(archive_version "$hpkg")
    if [ -z "$srcver" ]; then
        known=$({ in_root apt-cache pkgnames linux-headers-6 2>/dev/null || true; } |
                sed -n 's/^linux-headers-\([0-9.]*[-+][0-9a-z.]*\)-amd64$/\1/p' | sort -V | tr '\n' ' ')
        die "apt knows no $hpkg (not in the archive, or the lists are stale: apt-get update); \
releases it knows: ${known:-none}"
    fi
    imgver=$(archive_version "$img")
    [ -z "$imgver" ] || [ "$imgver" = "$srcver" ] ||
        die "$img is $imgver but $hpkg is $srcver: not one release"
    log "release $RELEASE: Debian $srcver ($hpkg${imgver:+, $img})"

    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    case $DIR/ in "${ROOT:-/}"/*) ;; *) die "$DIR is not inside the chroot $ROOT" ;; esac
    local debs=$DIR/.suture-debs hr=$DIR/.suture-headers t0=$SECONDS
    mkdir -p "$debs"
    # apt-get download runs as the _apt user when it can: let it write here.
    chmod 1777 "$debs"
    (
        cd "$debs"
        fetch "linux-source-$SERIES=$srcver"
        fetch "$hpkg=$srcver"
        fetch "$cpkg=$srcver"
        if [ "$SERIES" = 6.1 ]; then
            # Only the archive's newest linux-kbuild-6.1 stays in the archive; the headers depend
            # on "linux-kbuild-6.1 (>= $srcver)", so that one serves them as on a Debian host.
            fetch linux-kbuild-6.1
        else
            # 6.12 ships one linux-kbuild-<release> per release.
            fetch "linux-kbuild-$RELEASE=$srcver"
        fi
    )
    log "downloaded in $((SECONDS - t0)) s ($(du -sh "$debs" | cut -f1))"

    if [ ! -f "$hr/.suture-unpacked" ]; then
        rm -rf "$hr"
        mkdir -p "$hr"
        local deb
        for deb in "$debs/${hpkg}"_*.deb "$debs/${cpkg}"_*.deb "$debs"/linux-kbuild-"$SERIES"*_*.deb; do
            dpkg-deb -x "$deb" "$hr"
        done
        # The flavour's Makefile includes the common one by absolute path; point it into $hr
        # (as the chroot sees it).
        sed -i "s|^include /usr/src/|include $(inner "$hr")/usr/src/|" "$hr/usr/src/$hpkg/Makefile"
        touch "$hr/.suture-unpacked"
    fi
    HDR=$hr/usr/src/$hpkg
    [ -f "$HDR/.config" ] && [ -f "$HDR/Module.symvers" ] || die "$hpkg has no .config or Module.symvers"
    [ -d "$HDR/scripts/" ] || die "$HDR/scripts does not resolve (linux-kbuild-$SERIES unpacked?)"

    if [ ! -f "$DIR/.suture-unpacked" ]; then
        dpkg-deb --fsys-tarfile "$debs"/linux-source-"$SERIES"_*.deb |
            tar -x -C "$debs" ./usr/src/linux-source-"$SERIES".tar.xz
    fi
    TARBALL=$debs/usr/src/linux-source-$SERIES.tar.xz
}

if [ -n "$RELEASE" ]; then release_tree; else installed_tree; fi
log "config: $HDR/.config ($(basename "$HDR") $srcver)"

# The compiler: the one the release was built with, exactly.
want_cc=$(sed -n 's/^CONFIG_CC_VERSION_TEXT="\(.*\)"$/\1/p' "$HDR/.config")
# Its first word is the command (gcc-12 on 6.1, x86_64-linux-gnu-gcc-14 on 6.12).
CC=${want_cc%% *}
have_cc=$(in_root "$CC" --version | head -n1 || true)
[ "$want_cc" = "$have_cc" ] || die "$(basename "$HDR") was built with '$want_cc' but $CC${ROOT:+ in $ROOT} is \
'${have_cc:-missing}'; a rebuilt unit would not match the running kernel's code"

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
[ -n "$inc" ] && [ -f "$ROOT$inc" ] && common=$ROOT$inc
hdrver=$(mkver "$common")
[ "$treever" = "$hdrver" ] || die "source tree is $treever but $(basename "$HDR") is '$hdrver' (from $common)"
case "$srcver" in
    "$treever"-*) ;;
    *) die "source tree Makefile says $treever but package version is $srcver" ;;
esac
log "kernel $treever (Debian $srcver, $(basename "$HDR"))"

# --- configure and prepare ----------------------------------------------------------------------
cp "$HDR/.config" "$DIR/.config"
# What the release's modules were linked against (modpost of a unit's module reads it).
cp "$HDR/Module.symvers" "$DIR/Module.symvers"
cd "$DIR"
t0=$SECONDS
log "make CC=$CC olddefconfig${ROOT:+ in $ROOT}"
in_root make CC="$CC" olddefconfig </dev/null
log "olddefconfig took $((SECONDS - t0)) s"

t0=$SECONDS
log "make CC=$CC -j$JOBS modules_prepare${ROOT:+ in $ROOT}"
in_root make CC="$CC" -j"$JOBS" modules_prepare </dev/null
log "modules_prepare took $((SECONDS - t0)) s"

printf '%s\n' "kernel=$treever" "debian=$srcver" "headers=$(basename "$HDR")" \
    "headers_dir=$(inner "$HDR")" ${ROOT:+"chroot=$ROOT"} >"$DIR/.suture-ready"
# The downloaded packages are not needed any more (the headers stay in .suture-headers).
[ -z "$RELEASE" ] || rm -rf "$DIR/.suture-debs"
log "ready: $DIR"
