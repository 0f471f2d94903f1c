#!/usr/bin/env bash
# Prepare the stock Debian kernel for the booted-guest test tier (crates/suture/tests/guest).
#
#   scripts/guest-kernel.sh [--chroot ROOT] CACHE [RELEASE]
#
# RELEASE defaults to the kernel of the installed linux-headers-amd64 (e.g. 6.1.0-56-amd64), so
# the guest runs exactly the kernel the headers describe. Into CACHE/RELEASE it puts:
#   vmlinuz                      the kernel of Debian's linux-image-RELEASE package
#   modules/                     its /lib/modules/RELEASE tree (with modules.dep, for the tests
#                                that patch code inside a loadable module such as loop.ko)
#   version                      the package version
# The package is fetched with `apt-get download` and unpacked with `dpkg-deb -x`; nothing is
# installed on the host. Idempotent: CACHE/RELEASE/.ready marks a finished run (~400 MB).
# Compressed modules (Debian 13 ships .ko.xz) are decompressed, so the guest's modprobe and
# `suture build --modules` read plain .ko files.
# --chroot ROOT: apt runs in ROOT, a root file system of the release the kernel belongs to (the
# host's apt lists know only the host's release), as in scripts/kernel-tree.sh --chroot.
set -euo pipefail

log() { printf 'guest-kernel: %s\n' "$*" >&2; }
die() { printf 'guest-kernel: error: %s\n' "$*" >&2; exit 1; }

ROOT=
if [ "${1:-}" = --chroot ]; then
    [ $# -ge 2 ] || die "--chroot needs a directory"
    ROOT=$(cd "$2" && pwd) || die "no directory $2"
    shift 2
fi
# apt in ROOT (in /, or in the current directory when it lies inside ROOT), or on the host.
apt_in() {
    if [ -z "$ROOT" ]; then "$@"; return; fi
    local here=/
    case $(pwd)/ in "$ROOT"/*) here=$(pwd); here=${here#"$ROOT"} ;; esac
    chroot "$ROOT" sh -c 'cd "$1" && shift && exec "$@"' sh "${here:-/}" "$@"
}
[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 [--chroot ROOT] CACHE [RELEASE]"
CACHE=$1
if [ $# -eq 2 ]; then
    RELEASE=$2
else
    # "linux-headers-6.1.0-56-amd64 (= 6.1.192-2)" -> 6.1.0-56-amd64
    dep=$(dpkg-query -W -f='${Depends}' linux-headers-amd64 2>/dev/null) ||
        die "linux-headers-amd64 is not installed (scripts/test.sh installs it)"
    RELEASE=$(printf '%s\n' "$dep" | sed -n 's/^linux-headers-\([^ ,]*\).*/\1/p')
    [ -n "$RELEASE" ] || die "cannot read the kernel release from: $dep"
fi
OUT=$CACHE/$RELEASE
if [ -e "$OUT/.ready" ]; then
    log "$OUT is ready (remove $OUT/.ready to redo it)"
    exit 0
fi

# The image must be the build the headers describe: same package version.
# Installed headers name the version; for another release (scripts/kernel-tree.sh --release) the
# archive's version of linux-headers-RELEASE, the one that script prepares the tree from.
want=$(dpkg-query -W -f='${Version}' "linux-headers-$RELEASE" 2>/dev/null ||
       { apt_in apt-cache show --no-all-versions "linux-headers-$RELEASE" 2>/dev/null || true; } |
       sed -n 's/^Version: //p' | head -n1)
[ -n "$want" ] || die "linux-headers-$RELEASE is neither installed nor known to apt"
pkg=linux-image-$RELEASE
mkdir -p "$CACHE"
if [ -n "$ROOT" ]; then
    mkdir -p "$ROOT/var/cache/suture"
    work=$(mktemp -d "$ROOT/var/cache/suture/.work.XXXXXX")
else
    work=$(mktemp -d "$CACHE/.work.XXXXXX")
fi
trap 'rm -rf "$work"' EXIT
log "fetching $pkg=$want"
# apt-get download runs as the _apt user when it can; a world-writable directory avoids the
# "download is performed unsandboxed" fallback warning.
chmod 1777 "$work"
ok=0
for attempt in 1 2 3; do
    if (cd "$work" && apt_in apt-get download -q "$pkg=$want" >/dev/null 2>"$work/apt.err"); then
        ok=1
        break
    fi
    log "apt-get download failed (attempt $attempt): $(tail -n1 "$work/apt.err")"
    if [ "$attempt" = 1 ] && [ "$(id -u)" = 0 ]; then apt_in apt-get update -qq || true; fi
    sleep 2
done
[ "$ok" = 1 ] || die "cannot download $pkg=$want (is it still in the archive?)"

log "unpacking"
dpkg-deb -x "$work"/"${pkg}"_*.deb "$work/x"
[ -f "$work/x/boot/vmlinuz-$RELEASE" ] || die "$pkg has no boot/vmlinuz-$RELEASE"
# Debian 13 ships its modules under usr/lib/modules.
mods=lib/modules
[ -d "$work/x/$mods/$RELEASE" ] || mods=usr/lib/modules
[ -d "$work/x/$mods/$RELEASE" ] || die "$pkg has no lib/modules/$RELEASE"
find "$work/x/$mods/$RELEASE" -name '*.ko.xz' -print0 | xargs -0 -r -n 500 xz -d
find "$work/x/$mods/$RELEASE" -name '*.ko.zst' -print0 | xargs -0 -r -n 500 zstd -q -d --rm
# modules.dep is generated at install time, not shipped: build it with busybox's depmod
# (kmod's depmod is not needed on the host).
busybox depmod -b "$work/x/${mods%lib/modules}" "$RELEASE" || die "depmod failed"

rm -rf "$OUT"
mkdir -p "$OUT"
mv "$work/x/boot/vmlinuz-$RELEASE" "$OUT/vmlinuz"
mv "$work/x/$mods/$RELEASE" "$OUT/modules"
printf '%s\n' "$want" >"$OUT/version"
touch "$OUT/.ready"
log "ready: $OUT ($(du -sh "$OUT" | cut -f1))"
